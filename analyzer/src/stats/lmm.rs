//! The profiled REML / ML deviance as a function of theta, and its optimisation.
//!
//! Follows lme4 (Bates et al. 2015) and MixedModels.jl: the augmented cross-product matrix
//! `[Lambda'Z'Z Lambda + I, Lambda'Z'X, Lambda'Z'y; ...; y'y]` is Cholesky-factored blockwise.
//! The first (largest) random-effects term stays block diagonal (one `k x k` block per level) and
//! its cross products with the rest are sparse per level; the rest is a small dense matrix that
//! faer factors. Everything the fit reports (beta, sigma, vcov, conditional modes) is read off the
//! factor at the optimum.

use faer::{Mat, Side};

use super::StatsError;
use super::design::Design;

/// Options of one fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// REML (default) or ML.
    pub reml: bool,
    /// Warm start (e.g. the previous fit's theta); lme4's start (identity) when `None` or when
    /// its length does not match the model.
    pub start_theta: Option<Vec<f64>>,
    /// Final trust-region radius of BOBYQA.
    pub rho_end: f64,
    /// Evaluation budget.
    pub max_evals: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            reml: true,
            start_theta: None,
            rho_end: 1e-9,
            max_evals: 20_000,
        }
    }
}

/// Standard deviations and correlations of one random-effects term.
#[derive(Debug, Clone, PartialEq)]
pub struct VarianceComponent {
    /// Grouping factor (`item:respondent`).
    pub group: String,
    /// Coefficient names (`(Intercept)`, `Days`).
    pub terms: Vec<String>,
    /// Standard deviation per coefficient.
    pub sd: Vec<f64>,
    /// Correlations `(i, j, rho)` for `i > j`.
    pub corr: Vec<(usize, usize, f64)>,
}

/// Conditional modes (BLUPs) of one random-effects term.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionalModes {
    /// Grouping factor.
    pub group: String,
    /// Coefficient names.
    pub terms: Vec<String>,
    /// Grouping levels.
    pub levels: Vec<String>,
    /// `values[level][coef]`.
    pub values: Vec<Vec<f64>>,
}

/// A fitted linear mixed model.
#[derive(Debug, Clone)]
pub struct LmmFit {
    /// REML or ML.
    pub reml: bool,
    /// Number of responses.
    pub n: f64,
    /// Relative covariance parameters (lme4's theta, terms largest first).
    pub theta: Vec<f64>,
    /// Fixed-effect names (estimable columns).
    pub fixed_names: Vec<String>,
    /// Aliased columns dropped.
    pub dropped_columns: Vec<String>,
    /// Fixed-effect estimates.
    pub beta: Vec<f64>,
    /// Covariance of beta, `p x p` row-major.
    pub vcov: Vec<f64>,
    /// Residual standard deviation.
    pub sigma: f64,
    /// REML criterion (REML) or deviance (ML).
    pub criterion: f64,
    /// Log-likelihood (REML log-likelihood for REML fits, as lme4).
    pub loglik: f64,
    /// AIC.
    pub aic: f64,
    /// BIC.
    pub bic: f64,
    /// Variance components, terms largest first.
    pub components: Vec<VarianceComponent>,
    /// Conditional modes per term.
    pub modes: Vec<ConditionalModes>,
    /// Whether BOBYQA reached its final radius.
    pub converged: bool,
    /// Whether a variance parameter sits on its boundary (lme4's `isSingular`, tol 1e-4).
    pub singular: bool,
    /// Optimiser message.
    pub message: String,
    /// Deviance evaluations spent.
    pub evaluations: usize,
}

impl LmmFit {
    /// Standard errors of beta.
    pub fn se(&self) -> Vec<f64> {
        let p = self.beta.len();
        (0..p).map(|i| self.vcov[i * p + i].sqrt()).collect()
    }
}

/// The blocked Cholesky factor at one theta.
#[derive(Debug, Clone)]
pub(crate) struct Factor {
    /// Per level of term 1: its `k1 x k1` lower factor, column-major.
    pub l11: Vec<f64>,
    /// Per level of term 1: rows (as `Design::b_rows`) x k1 of `L21`, row-major.
    pub l21: Vec<Vec<f64>>,
    /// Dense lower factor of the rest, `r x r`.
    pub ls: Mat<f64>,
    pub ld_l2: f64,
    pub ld_rx2: f64,
    pub pwrss: f64,
    /// Per term: `k x k` lower factor `T` (column-major).
    pub lambdas: Vec<Vec<f64>>,
}

fn lambdas(design: &Design, theta: &[f64]) -> Vec<Vec<f64>> {
    let mut pos = 0;
    let mut out = Vec::with_capacity(design.re_terms.len());
    for t in &design.re_terms {
        let k = t.k();
        let mut m = vec![0.0; k * k];
        for j in 0..k {
            for i in j..k {
                m[i + j * k] = theta.get(pos).copied().unwrap_or(0.0);
                pos += 1;
            }
        }
        out.push(m);
    }
    out
}

/// Dense in-place Cholesky of a small `k x k` column-major matrix (lower).
fn small_chol(a: &mut [f64], k: usize) -> bool {
    for j in 0..k {
        let mut d = a[j + j * k];
        for l in 0..j {
            d -= a[j + l * k] * a[j + l * k];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j + j * k] = d;
        for i in j + 1..k {
            let mut s = a[i + j * k];
            for l in 0..j {
                s -= a[i + l * k] * a[j + l * k];
            }
            a[i + j * k] = s / d;
        }
        for i in 0..j {
            a[i + j * k] = 0.0;
        }
    }
    true
}

impl Factor {
    /// Factors the augmented system at theta. `None` if it is not positive definite.
    pub(crate) fn new(design: &Design, theta: &[f64]) -> Option<Factor> {
        let lams = lambdas(design, theta);
        let t1 = &design.re_terms[0];
        let k1 = t1.k();
        let l1 = t1.levels.len();
        let q_rest = design.q_rest;
        let p = design.p();
        let r = q_rest + p + 1;
        let lam1 = &lams[0];

        // Which term/level block does a rest row belong to (Z rows only)?
        let mut row_term: Vec<(usize, usize)> = Vec::with_capacity(q_rest);
        for (ti, t) in design.re_terms.iter().enumerate().skip(1) {
            for _lvl in 0..t.levels.len() {
                for j in 0..t.k() {
                    row_term.push((ti, j));
                }
            }
        }

        // Scaled rest C' = Lambda_r' C Lambda_r + I (Z part), unscaled X and y.
        let c = &design.c;
        let mut s = Mat::<f64>::zeros(r, r);
        for j in 0..r {
            for i in 0..r {
                s[(i, j)] = c[i + j * r];
            }
        }
        // rows: s <- Lambda' s ; cols: s <- s Lambda (block by block)
        for (ti, t) in design.re_terms.iter().enumerate().skip(1) {
            let k = t.k();
            let lam = &lams[ti];
            let off = design.rest_offsets[ti - 1];
            let mut buf = vec![0.0; k];
            for lvl in 0..t.levels.len() {
                let base = off + lvl * k;
                // rows
                for col in 0..r {
                    for a in 0..k {
                        let mut v = 0.0;
                        for b in a..k {
                            v += lam[b + a * k] * s[(base + b, col)];
                        }
                        buf[a] = v;
                    }
                    for a in 0..k {
                        s[(base + a, col)] = buf[a];
                    }
                }
                // cols
                for row in 0..r {
                    for a in 0..k {
                        let mut v = 0.0;
                        for b in a..k {
                            v += s[(row, base + b)] * lam[b + a * k];
                        }
                        buf[a] = v;
                    }
                    for a in 0..k {
                        s[(row, base + a)] = buf[a];
                    }
                }
            }
        }
        for i in 0..q_rest {
            s[(i, i)] += 1.0;
        }

        let mut l11 = vec![0.0; l1 * k1 * k1];
        let mut l21 = Vec::with_capacity(l1);
        let mut ld_l2 = 0.0;
        let mut blk = vec![0.0; k1 * k1];
        let mut tmp = vec![0.0; k1 * k1];
        for g in 0..l1 {
            let d = &design.d1[g * k1 * k1..(g + 1) * k1 * k1];
            // tmp = D T
            for j in 0..k1 {
                for i in 0..k1 {
                    let mut v = 0.0;
                    for b in j..k1 {
                        v += d[i + b * k1] * lam1[b + j * k1];
                    }
                    tmp[i + j * k1] = v;
                }
            }
            // blk = T' tmp + I
            for j in 0..k1 {
                for i in 0..k1 {
                    let mut v = 0.0;
                    for a in i..k1 {
                        v += lam1[a + i * k1] * tmp[a + j * k1];
                    }
                    blk[i + j * k1] = v + if i == j { 1.0 } else { 0.0 };
                }
            }
            if !small_chol(&mut blk, k1) {
                return None;
            }
            for i in 0..k1 {
                ld_l2 += 2.0 * blk[i + i * k1].ln();
            }
            l11[g * k1 * k1..(g + 1) * k1 * k1].copy_from_slice(&blk);
            // Scaled B rows: (Lambda_r' B) T1, then L21 = B' L^{-T}.
            let rows = &design.b_rows[g];
            let vals = &design.b_vals[g];
            let nr = rows.len();
            let mut b = vals.clone();
            // Row scaling for Z-rest rows, block by block (blocks are complete, see Design).
            let mut i = 0;
            while i < nr {
                let row = rows[i];
                if row < q_rest {
                    let (ti, j0) = row_term[row];
                    debug_assert_eq!(j0, 0);
                    let k = design.re_terms[ti].k();
                    let lam = &lams[ti];
                    let mut out = vec![0.0; k * k1];
                    for a in 0..k {
                        for cidx in 0..k1 {
                            let mut v = 0.0;
                            for bb in a..k {
                                v += lam[bb + a * k] * b[(i + bb) * k1 + cidx];
                            }
                            out[a * k1 + cidx] = v;
                        }
                    }
                    b[i * k1..(i + k) * k1].copy_from_slice(&out);
                    i += k;
                } else {
                    i += 1;
                }
            }
            let mut rowbuf = vec![0.0; k1];
            for i in 0..nr {
                // right-multiply by T1
                for cidx in 0..k1 {
                    let mut v = 0.0;
                    for a in cidx..k1 {
                        v += b[i * k1 + a] * lam1[a + cidx * k1];
                    }
                    rowbuf[cidx] = v;
                }
                // forward solve L x = rowbuf'
                for a in 0..k1 {
                    let mut v = rowbuf[a];
                    for c2 in 0..a {
                        v -= blk[a + c2 * k1] * rowbuf[c2];
                    }
                    rowbuf[a] = v / blk[a + a * k1];
                }
                b[i * k1..(i + 1) * k1].copy_from_slice(&rowbuf);
            }
            // S -= L21 L21'
            for (ia, &ra) in rows.iter().enumerate() {
                for (ib, &rb) in rows.iter().enumerate().take(ia + 1) {
                    let mut v = 0.0;
                    for cidx in 0..k1 {
                        v += b[ia * k1 + cidx] * b[ib * k1 + cidx];
                    }
                    s[(ra, rb)] -= v;
                    if ia != ib {
                        s[(rb, ra)] -= v;
                    }
                }
            }
            l21.push(b);
        }
        let llt = s.llt(Side::Lower).ok()?;
        let ls = llt.L().to_owned();
        for i in 0..q_rest {
            ld_l2 += 2.0 * ls[(i, i)].ln();
        }
        let mut ld_rx2 = 0.0;
        for i in q_rest..q_rest + p {
            ld_rx2 += 2.0 * ls[(i, i)].ln();
        }
        let lyy = ls[(r - 1, r - 1)];
        let pwrss = lyy * lyy;
        if !(ld_l2.is_finite() && ld_rx2.is_finite() && pwrss.is_finite()) {
            return None;
        }
        Some(Factor {
            l11,
            l21,
            ls,
            ld_l2,
            ld_rx2,
            pwrss,
            lambdas: lams,
        })
    }

    /// lme4's profiled deviance (REML criterion or ML deviance).
    pub(crate) fn objective(&self, n: f64, p: usize, reml: bool) -> f64 {
        let two_pi = 2.0 * std::f64::consts::PI;
        if reml {
            let nmp = n - p as f64;
            self.ld_l2 + self.ld_rx2 + nmp * (1.0 + (two_pi * self.pwrss / nmp).ln())
        } else {
            self.ld_l2 + n * (1.0 + (two_pi * self.pwrss / n).ln())
        }
    }

    /// beta = L_XX'^{-1} l_yX'.
    pub(crate) fn beta(&self, q_rest: usize, p: usize) -> Vec<f64> {
        let r = q_rest + p + 1;
        let mut b: Vec<f64> = (0..p).map(|j| self.ls[(r - 1, q_rest + j)]).collect();
        for i in (0..p).rev() {
            let mut v = b[i];
            for j in i + 1..p {
                v -= self.ls[(q_rest + j, q_rest + i)] * b[j];
            }
            b[i] = v / self.ls[(q_rest + i, q_rest + i)];
        }
        b
    }

    /// (L_XX L_XX')^{-1}, row-major p x p (the unscaled covariance of beta).
    pub(crate) fn unscaled_vcov(&self, q_rest: usize, p: usize) -> Vec<f64> {
        // inv = L^{-1} (lower), result = inv' inv
        let mut inv = vec![0.0; p * p];
        for col in 0..p {
            for i in 0..p {
                let mut v = if i == col { 1.0 } else { 0.0 };
                for j in 0..i {
                    v -= self.ls[(q_rest + i, q_rest + j)] * inv[j * p + col];
                }
                inv[i * p + col] = v / self.ls[(q_rest + i, q_rest + i)];
            }
        }
        let mut out = vec![0.0; p * p];
        for a in 0..p {
            for b in 0..=a {
                let mut v = 0.0;
                for k in a.max(b)..p {
                    v += inv[k * p + a] * inv[k * p + b];
                }
                out[a * p + b] = v;
                out[b * p + a] = v;
            }
        }
        out
    }
}

/// Fits the model: optimises theta with BOBYQA, then reads the estimates off the factor.
pub fn fit(design: &Design, options: &FitOptions) -> Result<LmmFit, StatsError> {
    let p = design.p();
    let n = design.n;
    if n <= p as f64 {
        return Err(StatsError::TooFewObservations { n: n as usize, p });
    }
    let reml = options.reml;
    let nth = design.n_theta();
    let lower = design.theta_lower();
    let upper = vec![f64::INFINITY; nth];
    let mut theta = match &options.start_theta {
        Some(t) if t.len() == nth => t
            .iter()
            .zip(&lower)
            .map(|(v, lo)| if v.is_finite() { v.max(*lo) } else { 1.0 })
            .collect(),
        _ => design.theta_start(),
    };
    let objective = |th: &[f64]| -> f64 {
        match Factor::new(design, th) {
            Some(f) => f.objective(n, p, reml),
            None => f64::INFINITY,
        }
    };
    let warm = options.start_theta.as_ref().is_some_and(|t| t.len() == nth);
    let mut config = bobyqa::Config::new(nth);
    config.rho_begin = if warm { 0.02 } else { 0.2 };
    config.rho_end = options.rho_end.min(config.rho_begin);
    config.max_fun = options.max_evals.max(config.npt + 1);
    let mut solver =
        bobyqa::Bobyqa::new(nth, config).map_err(|s| StatsError::Optimizer(s.to_string()))?;
    let outcome = solver.minimize(objective, &mut theta, &lower, &upper);
    if !outcome.found_finite() {
        return Err(StatsError::Optimizer(
            "the deviance was never finite (degenerate data?)".into(),
        ));
    }
    let converged = matches!(
        outcome.status,
        bobyqa::Status::Converged | bobyqa::Status::FtolReached
    );
    finish(
        design,
        theta,
        reml,
        converged,
        outcome.status.to_string(),
        outcome.n_eval,
    )
}

/// The fit at a given theta, without optimising (profiling, comparisons with other software).
pub fn fit_at(design: &Design, theta: &[f64], reml: bool) -> Result<LmmFit, StatsError> {
    if theta.len() != design.n_theta() || theta.iter().any(|t| !t.is_finite()) {
        return Err(StatsError::Optimizer(format!(
            "theta must be {} finite numbers, got {:?}",
            design.n_theta(),
            theta
        )));
    }
    finish(
        design,
        theta.to_vec(),
        reml,
        true,
        "evaluated at a fixed theta".into(),
        1,
    )
}

fn finish(
    design: &Design,
    theta: Vec<f64>,
    reml: bool,
    converged: bool,
    message: String,
    evaluations: usize,
) -> Result<LmmFit, StatsError> {
    let p = design.p();
    let n = design.n;
    let q_rest = design.q_rest;
    let f = Factor::new(design, &theta)
        .ok_or_else(|| StatsError::Optimizer("the final factorisation failed".into()))?;
    let criterion = f.objective(n, p, reml);
    let beta_centred = f.beta(q_rest, p);
    let modes = conditional_modes(design, &f, &beta_centred);
    let mut beta = beta_centred;
    if design.formula.intercept {
        // The intercept (always the first, never aliased, column) absorbs the centring of y.
        beta[0] += design.y_shift;
    }
    let dof = if reml { n - p as f64 } else { n };
    let sigma = (f.pwrss / dof).sqrt();
    let mut vcov = f.unscaled_vcov(q_rest, p);
    for v in &mut vcov {
        *v *= sigma * sigma;
    }
    let npar = (p + theta.len() + 1) as f64;
    let loglik = -criterion / 2.0;
    let aic = criterion + 2.0 * npar;
    let bic = criterion + npar * n.ln();

    let mut components = Vec::new();
    let mut singular = false;
    let mut pos = 0;
    for (ti, t) in design.re_terms.iter().enumerate() {
        let k = t.k();
        let lam = &f.lambdas[ti];
        for j in 0..k {
            for i in j..k {
                if i == j && theta[pos] < 1e-4 {
                    singular = true;
                }
                pos += 1;
            }
        }
        // Sigma_t = sigma^2 T T'
        let mut cov = vec![0.0; k * k];
        for a in 0..k {
            for b in 0..k {
                let mut v = 0.0;
                for c in 0..=a.min(b) {
                    v += lam[a + c * k] * lam[b + c * k];
                }
                cov[a + b * k] = v * sigma * sigma;
            }
        }
        let sd: Vec<f64> = (0..k).map(|a| cov[a + a * k].sqrt()).collect();
        let mut corr = Vec::new();
        for b in 0..k {
            for a in b + 1..k {
                let den = sd[a] * sd[b];
                corr.push((
                    a,
                    b,
                    if den > 0.0 {
                        cov[a + b * k] / den
                    } else {
                        f64::NAN
                    },
                ));
            }
        }
        components.push(VarianceComponent {
            group: t.group.clone(),
            terms: t.coefs.clone(),
            sd,
            corr,
        });
    }
    Ok(LmmFit {
        reml,
        n,
        theta,
        fixed_names: design.fixed_names(),
        dropped_columns: design.dropped_names(),
        beta,
        vcov,
        sigma,
        criterion,
        loglik,
        aic,
        bic,
        components,
        modes,
        converged,
        singular,
        message,
        evaluations,
    })
}

fn conditional_modes(design: &Design, f: &Factor, beta: &[f64]) -> Vec<ConditionalModes> {
    let q_rest = design.q_rest;
    let p = design.p();
    let r = q_rest + p + 1;
    // rhs_rest = l_yZ' - L_XZ' beta; u_rest = L_RR'^{-1} rhs_rest
    let mut u_rest: Vec<f64> = (0..q_rest)
        .map(|i| {
            let mut v = f.ls[(r - 1, i)];
            for (j, bj) in beta.iter().enumerate() {
                v -= f.ls[(q_rest + j, i)] * bj;
            }
            v
        })
        .collect();
    for i in (0..q_rest).rev() {
        let mut v = u_rest[i];
        for j in i + 1..q_rest {
            v -= f.ls[(j, i)] * u_rest[j];
        }
        u_rest[i] = v / f.ls[(i, i)];
    }
    let t1 = &design.re_terms[0];
    let k1 = t1.k();
    let mut u1 = vec![0.0; t1.levels.len() * k1];
    for g in 0..t1.levels.len() {
        let rows = &design.b_rows[g];
        let l21 = &f.l21[g];
        let mut rhs = vec![0.0; k1];
        for (ia, &row) in rows.iter().enumerate() {
            let w = if row == r - 1 {
                1.0
            } else if row >= q_rest {
                -beta[row - q_rest]
            } else {
                -u_rest[row]
            };
            for c in 0..k1 {
                rhs[c] += l21[ia * k1 + c] * w;
            }
        }
        let blk = &f.l11[g * k1 * k1..(g + 1) * k1 * k1];
        for a in (0..k1).rev() {
            let mut v = rhs[a];
            for b in a + 1..k1 {
                v -= blk[b + a * k1] * rhs[b];
            }
            rhs[a] = v / blk[a + a * k1];
        }
        u1[g * k1..(g + 1) * k1].copy_from_slice(&rhs);
    }
    let mut out = Vec::new();
    for (ti, t) in design.re_terms.iter().enumerate() {
        let k = t.k();
        let lam = &f.lambdas[ti];
        let u: &[f64] = if ti == 0 {
            &u1
        } else {
            let off = design.rest_offsets[ti - 1];
            &u_rest[off..off + k * t.levels.len()]
        };
        let values = (0..t.levels.len())
            .map(|lvl| {
                (0..k)
                    .map(|a| (0..=a).map(|c| lam[a + c * k] * u[lvl * k + c]).sum())
                    .collect()
            })
            .collect();
        out.push(ConditionalModes {
            group: t.group.clone(),
            terms: t.coefs.clone(),
            levels: t.levels.clone(),
            values,
        });
    }
    out
}
