//! Sufficient statistics over cells, and the model blocks built from them for one formula.
//!
//! [`SufficientStats`] owns the data: one [`Moments`] per distinct combination of the factor
//! columns' levels (a cell): the count, and the means and centred cross products of the declared
//! continuous covariates and the response, `[x_1 .. x_k, y]` (with no covariates: count, mean and
//! centred sum of squares of y). Adding a response is a dictionary lookup per column, a hash
//! lookup for the cell and an O(k^2) update, so O(1) in the number of rows; new levels are
//! interned on the fly. [`Design::build`] turns the cells into the cross-product blocks of
//! `[Z X y]` for a formula: every entry of `Z`, `X` is a constant per cell (indicators, or a
//! numeric value when a text column's levels all parse as numbers, as in R) times at most one
//! continuous covariate, so every cross product is a sum over cells of constants times the
//! cell's moments. The number of cells, not of rows, bounds the cost.

use std::collections::HashMap;

use super::StatsError;
use super::formula::{Formula, RandomTerm};

/// Moments of `[x_1 .. x_k, y]` in one cell: count, means and centred cross products (Welford's
/// form, so sums of squares do not lose digits to cancellation). With no numeric covariates
/// (`k = 0`) this is the count, mean and centred sum of squares of the response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moments {
    /// Number of responses.
    pub n: f64,
    /// Means of the covariates, then of the response (`k + 1` values).
    pub mean: Vec<f64>,
    /// Centred cross products, `(k + 1) x (k + 1)` row-major.
    pub comoment: Vec<f64>,
}

impl Moments {
    fn empty(k: usize) -> Moments {
        Moments {
            n: 0.0,
            mean: vec![0.0; k + 1],
            comoment: vec![0.0; (k + 1) * (k + 1)],
        }
    }

    /// `v` is `[x_1 .. x_k, y]`; `d` is scratch of the same length.
    fn add(&mut self, v: &[f64], d: &mut [f64]) {
        self.n += 1.0;
        let m = v.len();
        for i in 0..m {
            d[i] = v[i] - self.mean[i];
            self.mean[i] += d[i] / self.n;
        }
        for i in 0..m {
            for j in 0..m {
                self.comoment[i * m + j] += d[i] * (v[j] - self.mean[j]);
            }
        }
    }

    fn merge(&mut self, o: &Moments) {
        if o.n == 0.0 {
            return;
        }
        let n = self.n + o.n;
        let m = self.mean.len();
        let d: Vec<f64> = (0..m).map(|i| o.mean[i] - self.mean[i]).collect();
        let w = self.n * o.n / n;
        for i in 0..m {
            for j in 0..m {
                self.comoment[i * m + j] += o.comoment[i * m + j] + d[i] * d[j] * w;
            }
            self.mean[i] += d[i] * o.n / n;
        }
        self.n = n;
    }

    fn k(&self) -> usize {
        self.mean.len() - 1
    }

    /// Sum over the cell of `x_a * x_b`, where `None` stands for the constant 1.
    pub fn cross(&self, a: Option<usize>, b: Option<usize>) -> f64 {
        let m = self.mean.len();
        match (a, b) {
            (None, None) => self.n,
            (Some(a), None) | (None, Some(a)) => self.n * self.mean[a],
            (Some(a), Some(b)) => self.n * self.mean[a] * self.mean[b] + self.comoment[a * m + b],
        }
    }

    /// Sum over the cell of `x_a * (y - shift)`.
    pub fn cross_y(&self, a: Option<usize>, shift: f64) -> f64 {
        let m = self.mean.len();
        let yk = self.k();
        let dy = self.mean[yk] - shift;
        match a {
            None => self.n * dy,
            Some(a) => self.n * self.mean[a] * dy + self.comoment[a * m + yk],
        }
    }

    /// Sum over the cell of `(y - shift)^2`.
    pub fn sum_sq_about(&self, shift: f64) -> f64 {
        let m = self.mean.len();
        let yk = self.k();
        let dy = self.mean[yk] - shift;
        self.comoment[yk * m + yk] + self.n * dy * dy
    }

    /// Mean of the response.
    pub fn mean_y(&self) -> f64 {
        self.mean[self.k()]
    }
}

#[derive(Debug, Clone, Default)]
struct LevelDict {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl LevelDict {
    fn intern(&mut self, level: &str) -> u32 {
        if let Some(&id) = self.index.get(level) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(level.to_string());
        self.index.insert(level.to_string(), id);
        id
    }
}

/// The sufficient statistics of a linear mixed model: per cell (distinct combination of the
/// factor columns' levels) the moments of `[x_1 .. x_k, y]` for the declared numeric covariates
/// `x` and the response `y`.
///
/// Order of `add` calls and batching never matter beyond floating-point summation order;
/// [`SufficientStats::merge`] combines two partial statistics with the same columns.
#[derive(Debug, Clone)]
pub struct SufficientStats {
    response: String,
    columns: Vec<String>,
    covariates: Vec<String>,
    dicts: Vec<LevelDict>,
    cells: HashMap<Vec<u32>, Moments>,
    n: u64,
    scratch: Vec<u32>,
    values: Vec<f64>,
    delta: Vec<f64>,
}

impl SufficientStats {
    /// Empty statistics for a response and the factor columns each response carries.
    ///
    /// A factor column whose levels all parse as numbers still works as a numeric covariate in
    /// a formula (as in R): each distinct value is then its own level, which is exact and cheap
    /// for covariates with few values (days, doses).
    pub fn new(response: &str, columns: &[&str]) -> SufficientStats {
        SufficientStats::with_covariates(response, columns, &[])
    }

    /// Empty statistics with continuous covariates kept as per-cell moments (no cell per
    /// value): responses are then added with [`Self::add_with_covariates`].
    pub fn with_covariates(
        response: &str,
        columns: &[&str],
        covariates: &[&str],
    ) -> SufficientStats {
        SufficientStats {
            response: response.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            covariates: covariates.iter().map(|c| c.to_string()).collect(),
            dicts: vec![LevelDict::default(); columns.len()],
            cells: HashMap::new(),
            n: 0,
            scratch: Vec::with_capacity(columns.len()),
            values: vec![0.0; covariates.len() + 1],
            delta: vec![0.0; covariates.len() + 1],
        }
    }

    /// The numeric covariates kept as moments.
    pub fn covariates(&self) -> &[String] {
        &self.covariates
    }

    /// The response's name.
    pub fn response(&self) -> &str {
        &self.response
    }

    /// The column names, in the order `add` expects levels.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Levels seen so far in column `col`, in order of first appearance (ids are positions).
    pub fn levels(&self, col: usize) -> &[String] {
        self.dicts
            .get(col)
            .map(|d| d.names.as_slice())
            .unwrap_or(&[])
    }

    /// Number of responses added.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Number of non-empty cells.
    pub fn n_cells(&self) -> usize {
        self.cells.len()
    }

    /// The id of `level` in column `col`, interning it if new.
    pub fn level_id(&mut self, col: usize, level: &str) -> Result<u32, StatsError> {
        let n_cols = self.columns.len();
        self.dicts
            .get_mut(col)
            .map(|d| d.intern(level))
            .ok_or(StatsError::Arity {
                expected: n_cols,
                got: col + 1,
            })
    }

    /// Adds one response given its level in every column (same order as [`Self::columns`]).
    pub fn add(&mut self, levels: &[&str], y: f64) -> Result<(), StatsError> {
        self.add_with_covariates(levels, &[], y)
    }

    /// Adds one response with its levels and its covariate values (same order as
    /// [`Self::covariates`]).
    pub fn add_with_covariates(
        &mut self,
        levels: &[&str],
        covariates: &[f64],
        y: f64,
    ) -> Result<(), StatsError> {
        if levels.len() != self.columns.len() {
            return Err(StatsError::Arity {
                expected: self.columns.len(),
                got: levels.len(),
            });
        }
        self.set_values(covariates, y)?;
        let mut key = std::mem::take(&mut self.scratch);
        key.clear();
        for (d, l) in self.dicts.iter_mut().zip(levels) {
            key.push(d.intern(l));
        }
        self.add_key(&key);
        self.scratch = key;
        Ok(())
    }

    fn set_values(&mut self, covariates: &[f64], y: f64) -> Result<(), StatsError> {
        if covariates.len() != self.covariates.len() {
            return Err(StatsError::Arity {
                expected: self.covariates.len(),
                got: covariates.len(),
            });
        }
        for &v in covariates.iter().chain(std::iter::once(&y)) {
            if !v.is_finite() {
                return Err(StatsError::NonFinite(v));
            }
        }
        self.values[..covariates.len()].copy_from_slice(covariates);
        self.values[covariates.len()] = y;
        Ok(())
    }

    /// Adds one response given level ids from [`Self::level_id`] (and covariate values, empty
    /// when there are none).
    pub fn add_ids(&mut self, ids: &[u32], covariates: &[f64], y: f64) -> Result<(), StatsError> {
        if ids.len() != self.columns.len() {
            return Err(StatsError::Arity {
                expected: self.columns.len(),
                got: ids.len(),
            });
        }
        for (d, &id) in self.dicts.iter().zip(ids) {
            if id as usize >= d.names.len() {
                return Err(StatsError::UnknownLevelId(id));
            }
        }
        self.set_values(covariates, y)?;
        self.add_key(ids);
        Ok(())
    }

    fn add_key(&mut self, key: &[u32]) {
        let k = self.covariates.len();
        if let Some(m) = self.cells.get_mut(key) {
            m.add(&self.values, &mut self.delta);
        } else {
            let mut m = Moments::empty(k);
            m.add(&self.values, &mut self.delta);
            self.cells.insert(key.to_vec(), m);
        }
        self.n += 1;
    }

    /// Adds all of `other`'s responses (columns must match by name and order).
    pub fn merge(&mut self, other: &SufficientStats) -> Result<(), StatsError> {
        if other.columns != self.columns
            || other.response != self.response
            || other.covariates != self.covariates
        {
            return Err(StatsError::ColumnsDiffer);
        }
        let maps: Vec<Vec<u32>> = self
            .dicts
            .iter_mut()
            .zip(&other.dicts)
            .map(|(mine, theirs)| theirs.names.iter().map(|l| mine.intern(l)).collect())
            .collect();
        for (key, m) in &other.cells {
            let k: Vec<u32> = key
                .iter()
                .zip(&maps)
                .map(|(&id, map)| map[id as usize])
                .collect();
            let kc = self.covariates.len();
            self.cells
                .entry(k)
                .or_insert_with(|| Moments::empty(kc))
                .merge(m);
        }
        self.n += other.n;
        Ok(())
    }

    /// Iterates over the non-empty cells: level ids per column and moments.
    pub fn cells(&self) -> impl Iterator<Item = (&[u32], &Moments)> {
        self.cells.iter().map(|(k, m)| (k.as_slice(), m))
    }
}

/// How a variable enters the fixed effects or a random-effects term.
#[derive(Debug, Clone, PartialEq)]
pub enum VarKind {
    /// A factor with its levels in ascending byte order (the first is the reference level).
    Factor(Vec<String>),
    /// A numeric covariate.
    Numeric,
}

/// A variable of the model with its levels/values as seen in the data.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Column name.
    pub name: String,
    /// Factor or numeric.
    pub kind: VarKind,
    /// Mean over responses (numeric covariates; emmeans' reference grid uses it).
    pub mean: f64,
    /// For a continuous covariate kept as moments, its index in the statistics' covariates.
    pub covariate: Option<usize>,
}

/// A fixed-effects column: its term and, per variable of the term, how it is coded.
#[derive(Debug, Clone)]
pub struct FixedColumn {
    /// R's column name (`scaleC:respondentgpt35`).
    pub name: String,
    /// Index into [`Design::fixed_terms`], or `None` for the intercept.
    pub term: Option<usize>,
    /// Per variable of the term: `Some(level)` for an indicator of that factor level, `None` for
    /// a numeric covariate's value.
    pub parts: Vec<(usize, Option<usize>)>,
}

/// One random-effects term as built: grouping levels and the coefficients per level.
#[derive(Debug, Clone)]
pub struct ReTerm {
    /// Grouping factor name (`item:respondent`).
    pub group: String,
    /// Coefficient names (`(Intercept)`, `Days`, `languagezh`).
    pub coefs: Vec<String>,
    /// Grouping levels (joined with ':' for interactions), sorted.
    pub levels: Vec<String>,
    /// Per coefficient: variable index and level (as [`FixedColumn::parts`]), or `None` for the
    /// intercept.
    pub(crate) coef_parts: Vec<Option<(usize, Option<usize>)>>,
}

impl ReTerm {
    /// Number of coefficients per level.
    pub fn k(&self) -> usize {
        self.coefs.len()
    }
}

/// A cell of the model: the combination of the formula's variables, with its moments.
#[derive(Debug, Clone)]
pub(crate) struct ModelCell {
    /// Per model variable: level index (factors) or the value (numeric).
    pub values: Vec<f64>,
    pub levels: Vec<usize>,
    pub moments: Moments,
}

/// The cross-product blocks of `[Z X y]` for one formula, with what is needed to name things.
///
/// Random-effects terms are ordered by decreasing number of levels (as lme4 does); the first
/// term's `Z1'Z1` is block diagonal and stored as per-level `k x k` blocks, its cross products
/// with everything else sparsely per level; the rest (`Z2..`, `X`, `y`) is one dense matrix.
#[derive(Debug, Clone)]
pub struct Design {
    /// The formula.
    pub formula: Formula,
    /// Number of responses.
    pub n: f64,
    /// Model variables (fixed and random), in first-mention order.
    pub variables: Vec<Variable>,
    /// Fixed terms as variable indices.
    pub fixed_terms: Vec<Vec<usize>>,
    /// All fixed columns R would create, before dropping aliased ones.
    pub all_columns: Vec<FixedColumn>,
    /// Indices into `all_columns` of the estimable (kept) columns.
    pub kept: Vec<usize>,
    /// Random-effects terms, largest first.
    pub re_terms: Vec<ReTerm>,
    pub(crate) cells: Vec<ModelCell>,
    /// First term: `Z1'Z1` blocks, level-major, each `k1 x k1` column-major.
    pub(crate) d1: Vec<f64>,
    /// First term: per level, the rows of the rest (`Z2.., X, y`) it touches and the cross
    /// products (`rows.len() x k1`, row-major).
    pub(crate) b_rows: Vec<Vec<usize>>,
    pub(crate) b_vals: Vec<Vec<f64>>,
    /// The rest (`Z2.., X, y`), dense, column-major `r x r` (full symmetric).
    pub(crate) c: Vec<f64>,
    /// Offsets of the random terms 2.. inside the rest.
    pub(crate) rest_offsets: Vec<usize>,
    /// Size of the Z part of the rest.
    pub(crate) q_rest: usize,
    /// `X'X` over all columns (for estimability, type III and dropped-column detection).
    pub(crate) xtx_all: Vec<f64>,
    /// The response is centred at this value before the blocks are formed (when the model has
    /// an intercept, which absorbs it), to keep `y'y` free of cancellation.
    pub(crate) y_shift: f64,
}

fn parse_num(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Design {
    /// Builds the blocks for `formula` from the statistics.
    pub fn build(stats: &SufficientStats, formula: &Formula) -> Result<Design, StatsError> {
        if formula.response != stats.response() {
            return Err(StatsError::MissingColumn(formula.response.clone()));
        }
        if formula.random.is_empty() {
            return Err(StatsError::Formula(
                "no random-effects term: a mixed model needs at least one (1 | group)".into(),
            ));
        }
        let var_names = formula.variables();
        // Each variable is a factor column (Ok) or a covariate kept as moments (Err).
        let mut col_of: Vec<Result<usize, usize>> = Vec::with_capacity(var_names.len());
        for v in &var_names {
            if let Some(c) = stats.columns().iter().position(|c| c == v) {
                col_of.push(Ok(c));
            } else if let Some(a) = stats.covariates().iter().position(|c| c == v) {
                if formula.random.iter().any(|r| r.group.contains(v)) {
                    return Err(StatsError::Formula(format!(
                        "the continuous covariate {v:?} cannot be a grouping factor"
                    )));
                }
                col_of.push(Err(a));
            } else {
                return Err(StatsError::MissingColumn(v.clone()));
            }
        }
        for t in &formula.fixed {
            let covs: Vec<&String> = t
                .iter()
                .filter(|v| stats.covariates().contains(v))
                .collect();
            if covs.len() > 1 {
                return Err(StatsError::Formula(format!(
                    "the product of continuous covariates {} is not supported",
                    Formula::term_label(t)
                )));
            }
        }
        let k_cov = stats.covariates().len();
        // Collapse the stored cells onto the model's factor variables.
        // In key order, so that the floating-point sums (and the fit to the
        // last bit) do not depend on the hash map's iteration order.
        let mut cells: Vec<(&[u32], &Moments)> = stats.cells().collect();
        cells.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut collapsed: HashMap<Vec<u32>, Moments> = HashMap::new();
        for (key, m) in cells {
            let k: Vec<u32> = col_of
                .iter()
                .map(|c| match c {
                    Ok(c) => key[*c],
                    Err(_) => 0,
                })
                .collect();
            collapsed
                .entry(k)
                .or_insert_with(|| Moments::empty(k_cov))
                .merge(m);
        }
        if collapsed.is_empty() {
            return Err(StatsError::NoData);
        }
        let mut keys: Vec<(Vec<u32>, Moments)> = collapsed.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let n: f64 = keys.iter().map(|(_, m)| m.n).sum();
        let y_shift = if formula.intercept {
            keys.iter().map(|(_, m)| m.n * m.mean_y()).sum::<f64>() / n
        } else {
            0.0
        };

        // Which variables are used only as grouping factors (always categorical).
        let numeric_allowed: Vec<bool> = var_names
            .iter()
            .map(|v| {
                formula.fixed.iter().flatten().any(|x| x == v)
                    || formula.random.iter().any(|r| r.slopes.contains(v))
            })
            .collect();
        // Levels present, per variable.
        let mut variables = Vec::with_capacity(var_names.len());
        let mut level_maps: Vec<HashMap<u32, usize>> = Vec::with_capacity(var_names.len());
        let mut numeric_values: Vec<HashMap<u32, f64>> = Vec::with_capacity(var_names.len());
        for (vi, v) in var_names.iter().enumerate() {
            let col = match col_of[vi] {
                Ok(c) => c,
                Err(a) => {
                    let mean = keys.iter().map(|(_, m)| m.n * m.mean[a]).sum::<f64>() / n;
                    variables.push(Variable {
                        name: v.clone(),
                        kind: VarKind::Numeric,
                        mean,
                        covariate: Some(a),
                    });
                    level_maps.push(HashMap::new());
                    numeric_values.push(HashMap::new());
                    continue;
                }
            };
            let names = stats.levels(col);
            let mut present: Vec<u32> = keys.iter().map(|(k, _)| k[vi]).collect();
            present.sort_unstable();
            present.dedup();
            let parsed: Option<Vec<f64>> = present
                .iter()
                .map(|&id| parse_num(&names[id as usize]))
                .collect();
            let (kind, map, nums) = match parsed {
                Some(vals) if numeric_allowed[vi] => {
                    let nums: HashMap<u32, f64> =
                        present.iter().copied().zip(vals.iter().copied()).collect();
                    (VarKind::Numeric, HashMap::new(), nums)
                }
                _ => {
                    let mut sorted: Vec<u32> = present.clone();
                    sorted.sort_by(|a, b| {
                        names[*a as usize]
                            .as_bytes()
                            .cmp(names[*b as usize].as_bytes())
                    });
                    let map: HashMap<u32, usize> =
                        sorted.iter().enumerate().map(|(i, &id)| (id, i)).collect();
                    let lv = sorted
                        .iter()
                        .map(|&id| names[id as usize].clone())
                        .collect();
                    (VarKind::Factor(lv), map, HashMap::new())
                }
            };
            variables.push(Variable {
                name: v.clone(),
                kind,
                mean: 0.0,
                covariate: None,
            });
            level_maps.push(map);
            numeric_values.push(nums);
        }
        let mut cells: Vec<ModelCell> = Vec::with_capacity(keys.len());
        for (k, m) in &keys {
            let mut values = vec![0.0; var_names.len()];
            let mut levels = vec![0usize; var_names.len()];
            for vi in 0..var_names.len() {
                match (&variables[vi].kind, variables[vi].covariate) {
                    (VarKind::Numeric, Some(a)) => values[vi] = m.mean[a],
                    (VarKind::Numeric, None) => values[vi] = numeric_values[vi][&k[vi]],
                    (VarKind::Factor(_), _) => levels[vi] = level_maps[vi][&k[vi]],
                }
            }
            cells.push(ModelCell {
                values,
                levels,
                moments: m.clone(),
            });
        }
        for (vi, var) in variables.iter_mut().enumerate() {
            if var.kind == VarKind::Numeric && var.covariate.is_none() {
                var.mean = cells
                    .iter()
                    .map(|c| c.values[vi] * c.moments.n)
                    .sum::<f64>()
                    / n;
            }
        }
        let idx = |name: &String| var_names.iter().position(|v| v == name).unwrap_or(0);

        // Fixed columns with R's coding rule.
        let fixed_terms: Vec<Vec<usize>> = formula
            .fixed
            .iter()
            .map(|t| t.iter().map(idx).collect())
            .collect();
        let all_columns = fixed_columns(formula, &fixed_terms, &variables);
        if all_columns.is_empty() {
            return Err(StatsError::Formula("the model has no fixed effects".into()));
        }
        let p_all = all_columns.len();
        let mut xtx_all = vec![0.0; p_all * p_all];
        let mut xrow = vec![Entry::ZERO; p_all];
        for c in &cells {
            x_entries(&all_columns, c, &variables, &mut xrow);
            for j in 0..p_all {
                if xrow[j].g == 0.0 {
                    continue;
                }
                for i in 0..p_all {
                    xtx_all[i + j * p_all] +=
                        c.moments.cross(xrow[i].cov, xrow[j].cov) * xrow[i].g * xrow[j].g;
                }
            }
        }
        let kept = independent_columns(&xtx_all, p_all);

        // Random-effects terms by decreasing number of levels, exactly as lme4's mkReTrms
        // orders them (so theta and the variance components line up with lmer's): only if
        // some term has more levels than the one before it, and then as `rev(order(nl))`,
        // which puts tied terms in reverse formula order.
        let mut re_terms: Vec<ReTerm> = Vec::new();
        let mut groups_per_term: Vec<Vec<usize>> = Vec::new();
        for rt in &formula.random {
            let (term, groups) = re_term(rt, &variables, &var_names, &cells)?;
            re_terms.push(term);
            groups_per_term.push(groups);
        }
        let nl: Vec<usize> = re_terms.iter().map(|t| t.levels.len()).collect();
        let order = lme4_term_order(&nl);
        let re_terms: Vec<ReTerm> = order.iter().map(|&i| re_terms[i].clone()).collect();
        let groups_per_term: Vec<Vec<usize>> =
            order.iter().map(|&i| groups_per_term[i].clone()).collect();
        let cell_groups: Vec<Vec<usize>> = (0..cells.len())
            .map(|ci| groups_per_term.iter().map(|g| g[ci]).collect())
            .collect();

        // Layout of the rest: Z2.., X (kept), y.
        let mut rest_offsets = Vec::new();
        let mut off = 0;
        for t in re_terms.iter().skip(1) {
            rest_offsets.push(off);
            off += t.k() * t.levels.len();
        }
        let q_rest = off;
        let p = kept.len();
        let r = q_rest + p + 1;
        let k1 = re_terms[0].k();
        let l1 = re_terms[0].levels.len();
        let mut d1 = vec![0.0; l1 * k1 * k1];
        let mut b_maps: Vec<HashMap<usize, Vec<f64>>> = vec![HashMap::new(); l1];
        let mut c = vec![0.0; r * r];
        // Sparse representation of the rest's row for one cell: (index, value).
        let mut rest_row: Vec<(usize, Entry)> = Vec::with_capacity(r);
        let mut z1 = vec![Entry::ZERO; k1];
        for (ci, cell) in cells.iter().enumerate() {
            x_entries(&all_columns, cell, &variables, &mut xrow);
            rest_row.clear();
            for (ti, t) in re_terms.iter().enumerate().skip(1) {
                let base = rest_offsets[ti - 1] + cell_groups[ci][ti] * t.k();
                for (j, part) in t.coef_parts.iter().enumerate() {
                    // Whole level blocks are kept (zeros too): scaling by Lambda mixes them.
                    rest_row.push((base + j, coef_entry(part, cell, &variables)));
                }
            }
            for (j, &col) in kept.iter().enumerate() {
                if xrow[col].g != 0.0 {
                    rest_row.push((q_rest + j, xrow[col]));
                }
            }
            let m = &cell.moments;
            // Cross products are sums over the cell: products of the constant parts times the
            // cell's moments of the covariates involved (1 where none).
            for &(i, ei) in &rest_row {
                for &(j, ej) in &rest_row {
                    c[i + j * r] += ei.g * ej.g * m.cross(ei.cov, ej.cov);
                }
                let vy = ei.g * m.cross_y(ei.cov, y_shift);
                c[i + (r - 1) * r] += vy;
                c[(r - 1) + i * r] += vy;
            }
            c[(r - 1) + (r - 1) * r] += m.sum_sq_about(y_shift);
            // First term.
            let g1 = cell_groups[ci][0];
            for (j, part) in re_terms[0].coef_parts.iter().enumerate() {
                z1[j] = coef_entry(part, cell, &variables);
            }
            let blk = &mut d1[g1 * k1 * k1..(g1 + 1) * k1 * k1];
            for a in 0..k1 {
                for b in 0..k1 {
                    blk[a + b * k1] += z1[a].g * z1[b].g * m.cross(z1[a].cov, z1[b].cov);
                }
            }
            let bm = &mut b_maps[g1];
            for &(i, ei) in &rest_row {
                let e = bm.entry(i).or_insert_with(|| vec![0.0; k1]);
                for a in 0..k1 {
                    e[a] += ei.g * z1[a].g * m.cross(ei.cov, z1[a].cov);
                }
            }
            let e = bm.entry(r - 1).or_insert_with(|| vec![0.0; k1]);
            for a in 0..k1 {
                e[a] += z1[a].g * m.cross_y(z1[a].cov, y_shift);
            }
        }
        let mut b_rows = Vec::with_capacity(l1);
        let mut b_vals = Vec::with_capacity(l1);
        for bm in b_maps {
            let mut rows: Vec<usize> = bm.keys().copied().collect();
            rows.sort_unstable();
            let mut vals = Vec::with_capacity(rows.len() * k1);
            for row in &rows {
                vals.extend_from_slice(&bm[row]);
            }
            b_rows.push(rows);
            b_vals.push(vals);
        }
        Ok(Design {
            formula: formula.clone(),
            n,
            variables,
            fixed_terms,
            all_columns,
            kept,
            re_terms,
            cells,
            d1,
            b_rows,
            b_vals,
            c,
            rest_offsets,
            q_rest,
            xtx_all,
            y_shift,
        })
    }

    /// Number of estimable fixed-effect columns.
    pub fn p(&self) -> usize {
        self.kept.len()
    }

    /// Names of the estimable fixed-effect columns.
    pub fn fixed_names(&self) -> Vec<String> {
        self.kept
            .iter()
            .map(|&i| self.all_columns[i].name.clone())
            .collect()
    }

    /// Names of aliased columns dropped as lme4 drops them.
    pub fn dropped_names(&self) -> Vec<String> {
        (0..self.all_columns.len())
            .filter(|i| !self.kept.contains(i))
            .map(|i| self.all_columns[i].name.clone())
            .collect()
    }

    /// Length of theta: a lower triangle per random term.
    pub fn n_theta(&self) -> usize {
        self.re_terms.iter().map(|t| t.k() * (t.k() + 1) / 2).sum()
    }

    /// lme4's lower bounds on theta (0 on diagonals of each term's Cholesky factor).
    pub fn theta_lower(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for t in &self.re_terms {
            let k = t.k();
            for j in 0..k {
                for i in j..k {
                    out.push(if i == j { 0.0 } else { f64::NEG_INFINITY });
                }
            }
        }
        out
    }

    /// lme4's starting theta (identity factors).
    pub fn theta_start(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for t in &self.re_terms {
            let k = t.k();
            for j in 0..k {
                for i in j..k {
                    out.push(if i == j { 1.0 } else { 0.0 });
                }
            }
        }
        out
    }

    /// Number of random effects.
    pub fn q(&self) -> usize {
        self.re_terms.iter().map(|t| t.k() * t.levels.len()).sum()
    }

    /// The full fixed-effects row (all columns) of a combination of variable values.
    pub(crate) fn x_row_all(&self, values: &[f64], levels: &[usize], out: &mut [f64]) {
        let cell = ModelCell {
            values: values.to_vec(),
            levels: levels.to_vec(),
            moments: Moments::empty(0),
        };
        x_row(&self.all_columns, &cell, out);
    }
}

/// A model column's value in a cell: a constant times (optionally) a covariate kept as moments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Entry {
    pub g: f64,
    pub cov: Option<usize>,
}

impl Entry {
    pub(crate) const ZERO: Entry = Entry { g: 0.0, cov: None };
}

pub(crate) fn parts_entry(
    parts: &[(usize, Option<usize>)],
    cell: &ModelCell,
    vars: &[Variable],
) -> Entry {
    let mut e = Entry { g: 1.0, cov: None };
    for &(v, lvl) in parts {
        match lvl {
            Some(l) => {
                if cell.levels[v] != l {
                    return Entry::ZERO;
                }
            }
            None => match vars[v].covariate {
                Some(a) => e.cov = Some(a),
                None => e.g *= cell.values[v],
            },
        }
    }
    e
}

/// lme4's order of random-effects terms given their numbers of levels: unchanged when they
/// never increase, else `rev(order(nl))` (decreasing, ties in reverse formula order).
fn lme4_term_order(levels: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..levels.len()).collect();
    if levels.windows(2).any(|w| w[1] > w[0]) {
        order.sort_by_key(|&i| levels[i]);
        order.reverse();
    }
    order
}

fn coef_entry(part: &Option<(usize, Option<usize>)>, cell: &ModelCell, vars: &[Variable]) -> Entry {
    match part {
        None => Entry { g: 1.0, cov: None },
        Some(p) => parts_entry(std::slice::from_ref(p), cell, vars),
    }
}

fn x_entries(cols: &[FixedColumn], cell: &ModelCell, vars: &[Variable], out: &mut [Entry]) {
    for (o, col) in out.iter_mut().zip(cols) {
        *o = parts_entry(&col.parts, cell, vars);
    }
}

fn x_row(cols: &[FixedColumn], cell: &ModelCell, out: &mut [f64]) {
    for (o, col) in out.iter_mut().zip(cols) {
        let mut v = 1.0;
        for &(var, lvl) in &col.parts {
            v *= match lvl {
                None => cell.values[var],
                Some(l) => {
                    if cell.levels[var] == l {
                        1.0
                    } else {
                        0.0
                    }
                }
            };
            if v == 0.0 {
                break;
            }
        }
        *o = v;
    }
}

/// R's rule: a factor in a term is coded by contrasts if the term without it is in the model
/// (the empty term counting when there is an intercept), otherwise by indicators.
fn fixed_columns(formula: &Formula, terms: &[Vec<usize>], vars: &[Variable]) -> Vec<FixedColumn> {
    let mut cols = Vec::new();
    if formula.intercept {
        cols.push(FixedColumn {
            name: "(Intercept)".into(),
            term: None,
            parts: Vec::new(),
        });
    }
    let mut has_empty = formula.intercept;
    for (ti, t) in terms.iter().enumerate() {
        // Per variable: list of (label, level option)
        let mut per_var: Vec<Vec<(String, Option<usize>)>> = Vec::new();
        for (pos, &v) in t.iter().enumerate() {
            let var = &vars[v];
            match &var.kind {
                VarKind::Numeric => per_var.push(vec![(var.name.clone(), None)]),
                VarKind::Factor(levels) => {
                    let margin: Vec<usize> = t
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != pos)
                        .map(|(_, &x)| x)
                        .collect();
                    let margin_present = if margin.is_empty() {
                        has_empty
                    } else {
                        terms.iter().any(|o| {
                            o.len() == margin.len() && margin.iter().all(|m| o.contains(m))
                        })
                    };
                    let start = usize::from(margin_present);
                    per_var.push(
                        (start..levels.len())
                            .map(|l| (format!("{}{}", var.name, levels[l]), Some(l)))
                            .collect(),
                    );
                }
            }
        }
        if t.len() == 1 && !has_empty && matches!(vars[t[0]].kind, VarKind::Factor(_)) {
            // A full indicator set for the first factor stands in for the intercept.
            has_empty = true;
        }
        // Cartesian product, first variable fastest.
        let mut combos: Vec<Vec<usize>> = vec![Vec::new()];
        for opts in &per_var {
            let mut next = Vec::new();
            for j in 0..opts.len() {
                for c in &combos {
                    let mut c2 = c.clone();
                    c2.push(j);
                    next.push(c2);
                }
            }
            combos = next;
        }
        // The product above makes the last variable slowest but orders earlier variables
        // inside; re-sort so that the first variable varies fastest.
        combos.sort_by(|a, b| a.iter().rev().cmp(b.iter().rev()));
        for combo in combos {
            let mut names = Vec::new();
            let mut parts = Vec::new();
            for (k, &j) in combo.iter().enumerate() {
                let (label, lvl) = &per_var[k][j];
                names.push(label.clone());
                parts.push((t[k], *lvl));
            }
            cols.push(FixedColumn {
                name: names.join(":"),
                term: Some(ti),
                parts,
            });
        }
    }
    cols
}

/// Columns kept by a sequential (Gram-Schmidt in `X'X`) rank check, as R's `qr()` with its
/// limited pivoting keeps them: a column nearly in the span of the earlier kept ones is dropped.
pub(crate) fn independent_columns(xtx: &[f64], p: usize) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    // Cholesky factor rows of kept columns (lower triangular, by kept order).
    let mut l: Vec<Vec<f64>> = Vec::new();
    for j in 0..p {
        let djj = xtx[j + j * p];
        if djj <= 0.0 {
            continue;
        }
        let mut row = Vec::with_capacity(kept.len() + 1);
        for (a, &ka) in kept.iter().enumerate() {
            let mut s = xtx[ka + j * p];
            for b in 0..a {
                s -= l[a][b] * row[b];
            }
            row.push(s / l[a][a]);
        }
        let resid = djj - row.iter().map(|v| v * v).sum::<f64>();
        if resid > 1e-14 * djj {
            row.push(resid.sqrt());
            l.push(row);
            kept.push(j);
        }
    }
    kept
}

type ReBuild = (ReTerm, Vec<usize>);

fn re_term(
    rt: &RandomTerm,
    vars: &[Variable],
    var_names: &[String],
    cells: &[ModelCell],
) -> Result<ReBuild, StatsError> {
    let idx = |name: &String| var_names.iter().position(|v| v == name).unwrap_or(0);
    let gvars: Vec<usize> = rt.group.iter().map(idx).collect();
    // Grouping levels: combinations present, named by joining level names with ':'.
    let level_name = |cell: &ModelCell| -> String {
        gvars
            .iter()
            .map(|&g| match &vars[g].kind {
                VarKind::Factor(l) => l[cell.levels[g]].clone(),
                VarKind::Numeric => format!("{}", cell.values[g]),
            })
            .collect::<Vec<_>>()
            .join(":")
    };
    let names: Vec<String> = cells.iter().map(level_name).collect();
    let mut levels: Vec<String> = names.clone();
    levels.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    levels.dedup();
    let pos: HashMap<&str, usize> = levels
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let groups: Vec<usize> = names.iter().map(|n| pos[n.as_str()]).collect();
    let mut coefs = Vec::new();
    let mut coef_parts = Vec::new();
    if rt.intercept {
        coefs.push("(Intercept)".to_string());
        coef_parts.push(None);
    }
    // As in R's model.matrix: without an intercept the first factor gets a
    // column per level (a numeric slope before it does not change that);
    // every later factor drops its reference level.
    let mut full_coding_used = rt.intercept;
    for s in &rt.slopes {
        let v = idx(s);
        match &vars[v].kind {
            VarKind::Numeric => {
                coefs.push(s.clone());
                coef_parts.push(Some((v, None)));
            }
            VarKind::Factor(lv) => {
                let start = usize::from(full_coding_used);
                full_coding_used = true;
                for (l, name) in lv.iter().enumerate().skip(start) {
                    coefs.push(format!("{s}{name}"));
                    coef_parts.push(Some((v, Some(l))));
                }
            }
        }
    }
    if coefs.is_empty() {
        return Err(StatsError::Formula(format!(
            "random term for {} has no coefficients",
            rt.group_name()
        )));
    }
    Ok((
        ReTerm {
            group: rt.group_name(),
            coefs,
            levels,
            coef_parts,
        },
        groups,
    ))
}

#[cfg(test)]
mod term_order_tests {
    use super::lme4_term_order;

    #[test]
    fn terms_are_ordered_as_lme4_orders_them() {
        // Checked against lme4 1.1-31's mkReTrms (nl = 5, 10, 5 gives b c a).
        assert_eq!(lme4_term_order(&[5, 10, 5]), vec![1, 2, 0]);
        assert_eq!(lme4_term_order(&[5, 5, 10]), vec![2, 1, 0]);
        // Never increasing: left as written, ties included.
        assert_eq!(lme4_term_order(&[10, 5, 5]), vec![0, 1, 2]);
        assert_eq!(lme4_term_order(&[3, 3]), vec![0, 1]);
        assert_eq!(lme4_term_order(&[]), Vec::<usize>::new());
    }
}
