//! Estimated marginal means over a reference grid with equal weights (as emmeans), and their
//! pairwise contrasts with Tukey's adjustment.
//!
//! The reference grid holds every combination of the levels of the fixed-effect factors;
//! numeric covariates sit at their mean. A marginal mean averages the grid's predictions over
//! the factors not in the specification. A linear function of beta that involves an aliased
//! (dropped) column in a way the data cannot identify is not estimable and reported as `None`,
//! as emmeans reports `nonEst`.

use faer::linalg::solvers::Solve;

use super::StatsError;
use super::design::{Design, VarKind};
use super::lmm::LmmFit;
use super::satterthwaite::{Satterthwaite, t_quantile, t_two_sided};
use super::tukey::ptukey;

/// One marginal mean.
#[derive(Debug, Clone, PartialEq)]
pub struct EmmRow {
    /// Level per factor of the specification.
    pub levels: Vec<String>,
    /// The contrast vector over the estimable columns (averaged grid rows).
    pub weights: Vec<f64>,
    /// Mean (`None` if not estimable).
    pub estimate: Option<f64>,
    /// Standard error.
    pub se: Option<f64>,
    /// Satterthwaite df.
    pub df: Option<f64>,
    /// Lower 95% confidence limit.
    pub lower: Option<f64>,
    /// Upper 95% confidence limit.
    pub upper: Option<f64>,
}

/// Marginal means over `factors`; rows ordered with the first factor varying fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct Emmeans {
    /// The factors.
    pub factors: Vec<String>,
    /// The means.
    pub rows: Vec<EmmRow>,
}

/// A pairwise difference of two marginal means.
#[derive(Debug, Clone, PartialEq)]
pub struct Contrast {
    /// emmeans' label (`A en - C en`).
    pub label: String,
    /// Row indices of the two means.
    pub pair: (usize, usize),
    /// Difference.
    pub estimate: Option<f64>,
    /// Standard error.
    pub se: Option<f64>,
    /// Satterthwaite df.
    pub df: Option<f64>,
    /// t ratio.
    pub t: Option<f64>,
    /// Tukey-adjusted p value (family = all means).
    pub p: Option<f64>,
    /// Unadjusted two-sided p value.
    pub p_unadjusted: Option<f64>,
}

/// Orthonormal basis of the null space of X over all columns (one vector per dropped column).
fn null_basis(design: &Design) -> Vec<Vec<f64>> {
    let pa = design.all_columns.len();
    let kept = &design.kept;
    let p = kept.len();
    let xtx = &design.xtx_all;
    let mut basis: Vec<Vec<f64>> = Vec::new();
    if p == pa {
        return basis;
    }
    let a = faer::Mat::<f64>::from_fn(p, p, |i, j| xtx[kept[i] + kept[j] * pa]);
    let Ok(llt) = a.llt(faer::Side::Lower) else {
        return basis;
    };
    for j in (0..pa).filter(|j| !kept.contains(j)) {
        let rhs = faer::Mat::<f64>::from_fn(p, 1, |i, _| xtx[kept[i] + j * pa]);
        let c = llt.solve(&rhs);
        let mut v = vec![0.0; pa];
        v[j] = 1.0;
        for (i, &k) in kept.iter().enumerate() {
            v[k] = -c[(i, 0)];
        }
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
            basis.push(v);
        }
    }
    basis
}

fn estimable(l: &[f64], basis: &[Vec<f64>]) -> bool {
    let ss: f64 = l.iter().map(|x| x * x).sum();
    let proj: f64 = basis
        .iter()
        .map(|b| {
            let d: f64 = l.iter().zip(b).map(|(x, y)| x * y).sum();
            d * d
        })
        .sum();
    proj <= 1e-8 * ss.max(1e-300)
}

/// Estimated marginal means over `factors` (names of fixed-effect factors).
pub fn emmeans(
    design: &Design,
    fit: &LmmFit,
    satt: &Satterthwaite,
    factors: &[&str],
) -> Result<Emmeans, StatsError> {
    let _ = fit;
    // Factors of the fixed part, in variable order.
    let fixed_vars: Vec<usize> = {
        let mut v: Vec<usize> = design.fixed_terms.iter().flatten().copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut spec_vars = Vec::with_capacity(factors.len());
    for f in factors {
        let vi = design
            .variables
            .iter()
            .position(|v| v.name == *f)
            .filter(|vi| fixed_vars.contains(vi))
            .ok_or_else(|| StatsError::Emmeans(format!("{f:?} is not a fixed-effect term")))?;
        if !matches!(design.variables[vi].kind, VarKind::Factor(_)) {
            return Err(StatsError::Emmeans(format!("{f:?} is not a factor")));
        }
        spec_vars.push(vi);
    }
    let grid_factors: Vec<usize> = fixed_vars
        .iter()
        .copied()
        .filter(|&v| matches!(design.variables[v].kind, VarKind::Factor(_)))
        .collect();
    let nlev = |v: usize| match &design.variables[v].kind {
        VarKind::Factor(l) => l.len(),
        VarKind::Numeric => 1,
    };
    let nvars = design.variables.len();
    let mut values = vec![0.0; nvars];
    for (vi, var) in design.variables.iter().enumerate() {
        if var.kind == VarKind::Numeric {
            values[vi] = var.mean;
        }
    }
    let pa = design.all_columns.len();
    let basis = null_basis(design);
    // Enumerate spec combos (first fastest) and, for each, average over the other factors.
    let spec_sizes: Vec<usize> = spec_vars.iter().map(|&v| nlev(v)).collect();
    let others: Vec<usize> = grid_factors
        .iter()
        .copied()
        .filter(|v| !spec_vars.contains(v))
        .collect();
    let other_sizes: Vec<usize> = others.iter().map(|&v| nlev(v)).collect();
    let n_spec: usize = spec_sizes.iter().product();
    let n_other: usize = other_sizes.iter().product();
    let mut rows = Vec::with_capacity(n_spec);
    let mut levels = vec![0usize; nvars];
    let mut xrow = vec![0.0; pa];
    for s in 0..n_spec {
        let mut rem = s;
        let mut names = Vec::with_capacity(spec_vars.len());
        for (k, &v) in spec_vars.iter().enumerate() {
            let lv = rem % spec_sizes[k];
            rem /= spec_sizes[k];
            levels[v] = lv;
            if let VarKind::Factor(l) = &design.variables[v].kind {
                names.push(l[lv].clone());
            }
        }
        let mut acc = vec![0.0; pa];
        for o in 0..n_other {
            let mut rem = o;
            for (k, &v) in others.iter().enumerate() {
                levels[v] = rem % other_sizes[k];
                rem /= other_sizes[k];
            }
            design.x_row_all(&values, &levels, &mut xrow);
            acc.iter_mut().zip(&xrow).for_each(|(a, x)| *a += x);
        }
        acc.iter_mut().for_each(|a| *a /= n_other as f64);
        let est_ok = estimable(&acc, &basis);
        let weights: Vec<f64> = design.kept.iter().map(|&k| acc[k]).collect();
        let row = if est_ok {
            let c = satt.contrast_1d(&weights);
            let tq = t_quantile(0.975, c.df);
            EmmRow {
                levels: names,
                weights,
                estimate: Some(c.estimate),
                se: Some(c.se),
                df: Some(c.df),
                lower: Some(c.estimate - tq * c.se),
                upper: Some(c.estimate + tq * c.se),
            }
        } else {
            EmmRow {
                levels: names,
                weights,
                estimate: None,
                se: None,
                df: None,
                lower: None,
                upper: None,
            }
        };
        rows.push(row);
    }
    Ok(Emmeans {
        factors: factors.iter().map(|f| f.to_string()).collect(),
        rows,
    })
}

/// All pairwise differences (row i minus row j, i < j) with Tukey-adjusted p values.
pub fn pairwise_tukey(emm: &Emmeans, fit: &LmmFit, satt: &Satterthwaite) -> Vec<Contrast> {
    let _ = fit;
    let k = emm.rows.len() as f64;
    let mut out = Vec::new();
    for i in 0..emm.rows.len() {
        for j in i + 1..emm.rows.len() {
            let (a, b) = (&emm.rows[i], &emm.rows[j]);
            let label = format!("{} - {}", a.levels.join(" "), b.levels.join(" "));
            if a.estimate.is_none() || b.estimate.is_none() {
                out.push(Contrast {
                    label,
                    pair: (i, j),
                    estimate: None,
                    se: None,
                    df: None,
                    t: None,
                    p: None,
                    p_unadjusted: None,
                });
                continue;
            }
            let l: Vec<f64> = a
                .weights
                .iter()
                .zip(&b.weights)
                .map(|(x, y)| x - y)
                .collect();
            let c = satt.contrast_1d(&l);
            let t = c.estimate / c.se;
            let p = if k >= 2.0 {
                1.0 - ptukey(std::f64::consts::SQRT_2 * t.abs(), k, c.df)
            } else {
                t_two_sided(t, c.df)
            };
            out.push(Contrast {
                label,
                pair: (i, j),
                estimate: Some(c.estimate),
                se: Some(c.se),
                df: Some(c.df),
                t: Some(t),
                p: Some(p),
                p_unadjusted: Some(t_two_sided(t, c.df)),
            });
        }
    }
    out
}
