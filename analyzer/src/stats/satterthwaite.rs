//! Satterthwaite degrees of freedom and Type III F tests, as lmerTest computes them.
//!
//! lmerTest differentiates the deviance numerically as a function of `(theta, sigma)`
//! (`numDeriv::hessian`, Richardson extrapolation) to get the asymptotic covariance of the
//! variance parameters, and the covariance of beta likewise (`numDeriv::jacobian`). A contrast's
//! degrees of freedom then follow from the delta method. We use the same step sizes and the same
//! extrapolation so the numbers agree to many digits, and build the Type III hypothesis matrices
//! with lmerTest's construction (projection of the full dummy design, orthogonalised against
//! containing terms).

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use statrs::distribution::{ContinuousCDF, FisherSnedecor, StudentsT};

use super::StatsError;
use super::design::{Design, Entry, VarKind, parts_entry};
use super::lmm::{Factor, LmmFit};

/// What Satterthwaite's method needs from a fit.
#[derive(Debug, Clone)]
pub struct Satterthwaite {
    /// `(theta, sigma)` at the optimum.
    pub varpar: Vec<f64>,
    /// Asymptotic covariance of `varpar`, `m x m` row-major (`2 H^-1`, pseudo-inverse).
    pub vcov_varpar: Vec<f64>,
    /// Derivatives of `vcov(beta)` with respect to each element of `varpar` (`p x p` row-major).
    pub jacobian: Vec<Vec<f64>>,
    /// Covariance of beta (copy of the fit's).
    pub vcov_beta: Vec<f64>,
    /// Fixed effects (copy of the fit's).
    pub beta: Vec<f64>,
}

/// A fixed effect with its t test.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedEffect {
    /// Column name.
    pub name: String,
    /// Estimate.
    pub estimate: f64,
    /// Standard error.
    pub se: f64,
    /// Satterthwaite df.
    pub df: f64,
    /// t value.
    pub t: f64,
    /// Two-sided p value.
    pub p: f64,
}

/// One row of a Type III table.
#[derive(Debug, Clone, PartialEq)]
pub struct AnovaRow {
    /// Term label (`scale:language`).
    pub term: String,
    /// Numerator df (rank of the hypothesis).
    pub num_df: f64,
    /// Satterthwaite denominator df.
    pub den_df: f64,
    /// F value.
    pub f: f64,
    /// p value.
    pub p: f64,
}

/// Result of a one-dimensional contrast `l' beta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contrast1D {
    /// `l' beta`.
    pub estimate: f64,
    /// Its standard error.
    pub se: f64,
    /// Satterthwaite df.
    pub df: f64,
}

const ZERO_TOL: f64 = 1.781_447_823_078_274e-5; // sqrt(.Machine$double.eps / 7e-7)

/// numDeriv's Richardson-extrapolated central differences of a vector function (jacobian).
fn richardson_jacobian(f: &mut dyn FnMut(&[f64]) -> Vec<f64>, x: &[f64], d: f64) -> Vec<Vec<f64>> {
    let n = x.len();
    let r = 4;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut h = (d * x[i]).abs() + if x[i].abs() < ZERO_TOL { 1e-4 } else { 0.0 };
        let mut a: Vec<Vec<f64>> = Vec::with_capacity(r);
        for _ in 0..r {
            let mut xp = x.to_vec();
            let mut xm = x.to_vec();
            xp[i] += h;
            xm[i] -= h;
            let fp = f(&xp);
            let fm = f(&xm);
            a.push(
                fp.iter()
                    .zip(&fm)
                    .map(|(p, m)| (p - m) / (2.0 * h))
                    .collect(),
            );
            h /= 2.0;
        }
        for m in 1..r {
            let w = 4f64.powi(m as i32);
            for k in 0..r - m {
                let next = a[k + 1].clone();
                for (v, nv) in a[k].iter_mut().zip(next) {
                    *v = (nv * w - *v) / (w - 1.0);
                }
            }
        }
        out.push(a.swap_remove(0));
    }
    out
}

/// numDeriv's `hessian` (genD, Richardson, d = 0.1, r = 4): the large relative step is what
/// lmerTest effectively uses, so we use it too.
fn richardson_hessian(f: &mut dyn FnMut(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let r = 4;
    let d = 0.1;
    let f0 = f(x);
    let h0: Vec<f64> = x
        .iter()
        .map(|&xi| (d * xi).abs() + if xi.abs() < ZERO_TOL { 1e-4 } else { 0.0 })
        .collect();
    let extrapolate = |a: &mut Vec<f64>| {
        for m in 1..r {
            let w = 4f64.powi(m as i32);
            for k in 0..r - m {
                a[k] = (a[k + 1] * w - a[k]) / (w - 1.0);
            }
        }
        a[0]
    };
    let mut hdiag = vec![0.0; n];
    for i in 0..n {
        let mut h = h0.clone();
        let mut ha = Vec::with_capacity(r);
        for _ in 0..r {
            let mut xp = x.to_vec();
            let mut xm = x.to_vec();
            xp[i] += h[i];
            xm[i] -= h[i];
            ha.push((f(&xp) - 2.0 * f0 + f(&xm)) / (h[i] * h[i]));
            h.iter_mut().for_each(|v| *v /= 2.0);
        }
        hdiag[i] = extrapolate(&mut ha);
    }
    let mut hess = vec![0.0; n * n];
    for i in 0..n {
        hess[i * n + i] = hdiag[i];
        for j in 0..i {
            let mut h = h0.clone();
            let mut da = Vec::with_capacity(r);
            for _ in 0..r {
                let mut xp = x.to_vec();
                let mut xm = x.to_vec();
                xp[i] += h[i];
                xp[j] += h[j];
                xm[i] -= h[i];
                xm[j] -= h[j];
                da.push(
                    (f(&xp) - 2.0 * f0 + f(&xm) - hdiag[i] * h[i] * h[i] - hdiag[j] * h[j] * h[j])
                        / (2.0 * h[i] * h[j]),
                );
                h.iter_mut().for_each(|v| *v /= 2.0);
            }
            let v = extrapolate(&mut da);
            hess[i * n + j] = v;
            hess[j * n + i] = v;
        }
    }
    hess
}

/// Eigen-decomposition of a symmetric matrix, eigenvalues in decreasing order (as R's `eigen`).
/// Returns (values, vectors as columns: `vectors[k]` is the k-th eigenvector).
fn eigen_desc(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<Vec<f64>>), StatsError> {
    let m = Mat::<f64>::from_fn(n, n, |i, j| a[i * n + j]);
    let e = m
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| StatsError::Optimizer("eigendecomposition failed".into()))?;
    let s = e.S().column_vector();
    let u = e.U();
    let mut vals = Vec::with_capacity(n);
    let mut vecs = Vec::with_capacity(n);
    for k in (0..n).rev() {
        vals.push(s[k]);
        vecs.push((0..n).map(|i| u[(i, k)]).collect());
    }
    Ok((vals, vecs))
}

fn qform(l: &[f64], m: &[f64]) -> f64 {
    let n = l.len();
    let mut s = 0.0;
    for i in 0..n {
        if l[i] == 0.0 {
            continue;
        }
        for j in 0..n {
            s += l[i] * m[i * n + j] * l[j];
        }
    }
    s
}

impl Satterthwaite {
    /// Differentiates the deviance at the fit's optimum.
    pub fn new(design: &Design, fit: &LmmFit) -> Result<Satterthwaite, StatsError> {
        let n = design.n;
        let p = design.p();
        let reml = fit.reml;
        let q_rest = design.q_rest;
        let mut varpar = fit.theta.clone();
        varpar.push(fit.sigma);
        let nt = fit.theta.len();
        let two_pi = 2.0 * std::f64::consts::PI;
        let mut devfun = |vp: &[f64]| -> f64 {
            let sigma2 = vp[nt] * vp[nt];
            match Factor::new(design, &vp[..nt]) {
                None => f64::NAN,
                Some(f) => {
                    let dev = f.ld_l2 + f.pwrss / sigma2 + n * (two_pi * sigma2).ln();
                    if reml {
                        dev + f.ld_rx2 - p as f64 * (two_pi * sigma2).ln()
                    } else {
                        dev
                    }
                }
            }
        };
        let h = richardson_hessian(&mut devfun, &varpar);
        let m = varpar.len();
        let (vals, vecs) = eigen_desc(&h, m)?;
        let mut vcov_varpar = vec![0.0; m * m];
        for (val, vec) in vals.iter().zip(&vecs) {
            if *val > 1e-8 {
                for i in 0..m {
                    for j in 0..m {
                        vcov_varpar[i * m + j] += 2.0 * vec[i] * vec[j] / val;
                    }
                }
            }
        }
        let mut covbeta = |vp: &[f64]| -> Vec<f64> {
            match Factor::new(design, &vp[..nt]) {
                None => vec![f64::NAN; p * p],
                Some(f) => {
                    let s2 = vp[nt] * vp[nt];
                    f.unscaled_vcov(q_rest, p)
                        .into_iter()
                        .map(|v| v * s2)
                        .collect()
                }
            }
        };
        let jacobian = richardson_jacobian(&mut covbeta, &varpar, 1e-4);
        Ok(Satterthwaite {
            varpar,
            vcov_varpar,
            jacobian,
            vcov_beta: fit.vcov.clone(),
            beta: fit.beta.clone(),
        })
    }

    /// Estimate, SE and Satterthwaite df of `l' beta` (lmerTest's `contest1D`).
    pub fn contrast_1d(&self, l: &[f64]) -> Contrast1D {
        let estimate: f64 = l.iter().zip(&self.beta).map(|(a, b)| a * b).sum();
        let var = qform(l, &self.vcov_beta);
        let grad: Vec<f64> = self.jacobian.iter().map(|j| qform(l, j)).collect();
        let denom = qform(&grad, &self.vcov_varpar);
        Contrast1D {
            estimate,
            se: var.sqrt(),
            df: 2.0 * var * var / denom,
        }
    }

    /// F test of `L beta = 0` (lmerTest's `contestMD`): (num df, den df, F, p). `None` when the
    /// hypothesis has rank 0.
    pub fn contrast_md(&self, rows: &[Vec<f64>]) -> Result<Option<AnovaRow>, StatsError> {
        if rows.is_empty() {
            return Ok(None);
        }
        let p = self.beta.len();
        let k = rows.len();
        if k == 1 {
            let c = self.contrast_1d(&rows[0]);
            let t = c.estimate / c.se;
            return Ok(Some(f_row(t * t, 1.0, c.df)));
        }
        let mut vl = vec![0.0; k * k];
        for a in 0..k {
            for b in 0..k {
                let mut s = 0.0;
                for i in 0..p {
                    if rows[a][i] == 0.0 {
                        continue;
                    }
                    for j in 0..p {
                        s += rows[a][i] * self.vcov_beta[i * p + j] * rows[b][j];
                    }
                }
                vl[a * k + b] = s;
            }
        }
        let (d, vecs) = eigen_desc(&vl, k)?;
        let tol = (f64::EPSILON.sqrt() * d[0]).max(0.0);
        let q = d.iter().filter(|&&v| v > tol).count();
        if q == 0 {
            return Ok(None);
        }
        let ptl: Vec<Vec<f64>> = (0..q)
            .map(|m| {
                (0..p)
                    .map(|j| (0..k).map(|a| vecs[m][a] * rows[a][j]).sum())
                    .collect()
            })
            .collect();
        if q == 1 {
            let c = self.contrast_1d(&ptl[0]);
            let t = c.estimate / c.se;
            return Ok(Some(f_row(t * t, 1.0, c.df)));
        }
        let mut fsum = 0.0;
        let mut nu = Vec::with_capacity(q);
        for m in 0..q {
            let est: f64 = ptl[m].iter().zip(&self.beta).map(|(a, b)| a * b).sum();
            fsum += est * est / d[m];
            let grad: Vec<f64> = self.jacobian.iter().map(|j| qform(&ptl[m], j)).collect();
            nu.push(2.0 * d[m] * d[m] / qform(&grad, &self.vcov_varpar));
        }
        let fval = fsum / q as f64;
        let ddf = fstat_ddf(&nu);
        Ok(Some(f_row(fval, q as f64, ddf)))
    }
}

fn fstat_ddf(nu: &[f64]) -> f64 {
    if nu.len() == 1 {
        return nu[0];
    }
    if nu.windows(2).all(|w| (w[1] - w[0]).abs() < 1e-8) {
        return nu.iter().sum::<f64>() / nu.len() as f64;
    }
    if nu.iter().any(|&v| v <= 2.0) {
        return 2.0;
    }
    let e: f64 = nu.iter().map(|v| v / (v - 2.0)).sum();
    2.0 * e / (e - nu.len() as f64)
}

fn f_row(f: f64, num_df: f64, den_df: f64) -> AnovaRow {
    AnovaRow {
        term: String::new(),
        num_df,
        den_df,
        f,
        p: f_upper(f, num_df, den_df),
    }
}

/// Upper tail of the F distribution (NaN for invalid parameters).
pub(crate) fn f_upper(f: f64, d1: f64, d2: f64) -> f64 {
    match FisherSnedecor::new(d1, d2) {
        Ok(dist) if f.is_finite() => dist.sf(f),
        _ => f64::NAN,
    }
}

/// Two-sided p value of a t statistic.
pub(crate) fn t_two_sided(t: f64, df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df) {
        Ok(dist) if t.is_finite() => 2.0 * dist.sf(t.abs()),
        _ => f64::NAN,
    }
}

/// Quantile of Student's t (NaN for invalid df).
pub(crate) fn t_quantile(p: f64, df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df) {
        Ok(dist) => dist.inverse_cdf(p),
        _ => f64::NAN,
    }
}

/// Fixed effects with Satterthwaite t tests, as `summary()` of an lmerTest fit.
pub fn fixed_effects(fit: &LmmFit, satt: &Satterthwaite) -> Vec<FixedEffect> {
    let p = fit.beta.len();
    (0..p)
        .map(|i| {
            let mut l = vec![0.0; p];
            l[i] = 1.0;
            let c = satt.contrast_1d(&l);
            let t = c.estimate / c.se;
            FixedEffect {
                name: fit.fixed_names[i].clone(),
                estimate: c.estimate,
                se: c.se,
                df: c.df,
                t,
                p: t_two_sided(t, c.df),
            }
        })
        .collect()
}

/// R's `zapsmall(x, digits = 7)` over a whole matrix.
fn zapsmall(x: &mut [f64]) {
    let mx = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let digits = if mx > 0.0 {
        (7.0 - mx.log10().ceil()).max(0.0)
    } else {
        7.0
    };
    let scale = 10f64.powf(digits);
    for v in x.iter_mut() {
        *v = (*v * scale).round() / scale;
    }
}

/// Residuals of least squares of each column of `y` on the columns of `x` (vectors of length m),
/// via modified Gram-Schmidt with R's rank tolerance (1e-7).
fn lm_residuals(x: &[Vec<f64>], y: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for col in x {
        let norm0 = col.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm0 == 0.0 {
            continue;
        }
        let mut v = col.clone();
        for _ in 0..2 {
            for b in &basis {
                let dot: f64 = v.iter().zip(b).map(|(a, c)| a * c).sum();
                v.iter_mut().zip(b).for_each(|(a, c)| *a -= dot * c);
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-7 * norm0 {
            v.iter_mut().for_each(|a| *a /= norm);
            basis.push(v);
        }
    }
    y.iter()
        .map(|col| {
            let mut v = col.clone();
            for _ in 0..2 {
                for b in &basis {
                    let dot: f64 = v.iter().zip(b).map(|(a, c)| a * c).sum();
                    v.iter_mut().zip(b).for_each(|(a, c)| *a -= dot * c);
                }
            }
            v
        })
        .collect()
}

/// Type III tests of every fixed term (lmerTest's `anova(type = 3)`).
pub fn anova_type3(
    design: &Design,
    fit: &LmmFit,
    satt: &Satterthwaite,
) -> Result<Vec<AnovaRow>, StatsError> {
    let labels: Vec<String> = design
        .fixed_terms
        .iter()
        .map(|t| {
            t.iter()
                .map(|&v| design.variables[v].name.clone())
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect();
    let p = design.p();
    let kept_terms: Vec<Option<usize>> = design
        .kept
        .iter()
        .map(|&c| design.all_columns[c].term)
        .collect();
    let map: Vec<Vec<usize>> = (0..labels.len())
        .map(|t| (0..p).filter(|&j| kept_terms[j] == Some(t)).collect())
        .collect();
    let lists: Vec<Vec<Vec<f64>>> = if p <= 1 || labels.len() <= 1 {
        type1_contrasts(design, &map)
    } else {
        type3_contrasts(design, &map)
    };
    let _ = fit;
    let mut out = Vec::new();
    for (ti, rows) in lists.into_iter().enumerate() {
        if let Some(mut row) = satt.contrast_md(&rows)? {
            row.term = labels[ti].clone();
            out.push(row);
        }
    }
    Ok(out)
}

/// `X'X` restricted to the kept columns, row-major.
fn xtx_kept(design: &Design) -> Vec<f64> {
    let pa = design.all_columns.len();
    let p = design.p();
    let mut out = vec![0.0; p * p];
    for (a, &ca) in design.kept.iter().enumerate() {
        for (b, &cb) in design.kept.iter().enumerate() {
            out[a * p + b] = design.xtx_all[ca + cb * pa];
        }
    }
    out
}

fn type1_contrasts(design: &Design, map: &[Vec<usize>]) -> Vec<Vec<Vec<f64>>> {
    let p = design.p();
    let x = xtx_kept(design);
    // lmerTest's doolittle(x, eps = 1e-6): unit lower L with U; contrasts are rows of t(L).
    let mut l = vec![0.0; p * p];
    let mut u = vec![0.0; p * p];
    for i in 0..p {
        l[i * p + i] = 1.0;
    }
    let eps = 1e-6;
    for i in 0..p {
        for j in 0..p {
            let mut v = x[i * p + j];
            for k in 0..i {
                v -= l[i * p + k] * u[k * p + j];
            }
            u[i * p + j] = v;
        }
        for j in i + 1..p {
            let mut v = x[j * p + i];
            for k in 0..i {
                v -= l[j * p + k] * u[k * p + i];
            }
            l[j * p + i] = if u[i * p + i].abs() < eps {
                0.0
            } else {
                v / u[i * p + i]
            };
        }
    }
    for v in &mut l {
        if v.abs() < eps {
            *v = 0.0;
        }
    }
    if p == 1 {
        l[0] = 1.0;
    }
    map.iter()
        .map(|cols| {
            cols.iter()
                .map(|&r| (0..p).map(|c| l[c * p + r]).collect())
                .collect()
        })
        .collect()
}

fn type3_contrasts(design: &Design, map: &[Vec<usize>]) -> Vec<Vec<Vec<f64>>> {
    let p = design.p();
    let nterms = design.fixed_terms.len();
    // rdX: intercept (if any) and, per term, full indicator coding of its factors times its
    // numeric variables.
    struct RdCol {
        name: String,
        parts: Vec<(usize, Option<usize>)>,
    }
    let mut rd: Vec<RdCol> = Vec::new();
    if design.formula.intercept {
        rd.push(RdCol {
            name: "(Intercept)".into(),
            parts: Vec::new(),
        });
    }
    for t in &design.fixed_terms {
        let mut combos: Vec<Vec<(usize, Option<usize>, String)>> = vec![Vec::new()];
        for &v in t {
            let var = &design.variables[v];
            let opts: Vec<(usize, Option<usize>, String)> = match &var.kind {
                VarKind::Numeric => vec![(v, None, var.name.clone())],
                VarKind::Factor(lv) => lv
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (v, Some(i), format!("{}{}", var.name, l)))
                    .collect(),
            };
            let mut next = Vec::new();
            for o in &opts {
                for c in &combos {
                    let mut c2 = c.clone();
                    c2.push(o.clone());
                    next.push(c2);
                }
            }
            combos = next;
        }
        for c in combos {
            rd.push(RdCol {
                name: c.iter().map(|x| x.2.clone()).collect::<Vec<_>>().join(":"),
                parts: c.iter().map(|x| (x.0, x.1)).collect(),
            });
        }
    }
    let m = rd.len();
    // X' rdX (p x m) from the cells (covariates kept as moments enter through their moments).
    let mut xrd = vec![0.0; p * m];
    for cell in &design.cells {
        let xe: Vec<Entry> = design
            .kept
            .iter()
            .map(|&c| parts_entry(&design.all_columns[c].parts, cell, &design.variables))
            .collect();
        let rde: Vec<Entry> = rd
            .iter()
            .map(|c| parts_entry(&c.parts, cell, &design.variables))
            .collect();
        for (a, ea) in xe.iter().enumerate() {
            if ea.g == 0.0 {
                continue;
            }
            for (b, eb) in rde.iter().enumerate() {
                if eb.g != 0.0 {
                    xrd[a * m + b] += ea.g * eb.g * cell.moments.cross(ea.cov, eb.cov);
                }
            }
        }
    }
    // L (m x p) = rdX' X (X'X)^{-1}: solve (X'X) Y = X'rdX, L = Y'.
    let xtx = xtx_kept(design);
    let a = Mat::<f64>::from_fn(p, p, |i, j| xtx[i * p + j]);
    let Ok(llt) = a.llt(Side::Lower) else {
        return vec![Vec::new(); nterms];
    };
    let rhs = Mat::<f64>::from_fn(p, m, |i, j| xrd[i * m + j]);
    let y = llt.solve(&rhs);
    // L stored column-wise: lcol[j] is column j (over the m rdX columns).
    let mut lflat = vec![0.0; m * p];
    for i in 0..m {
        for j in 0..p {
            lflat[i * p + j] = y[(j, i)];
        }
    }
    zapsmall(&mut lflat);
    let mut lcol: Vec<Vec<f64>> = (0..p)
        .map(|j| (0..m).map(|i| lflat[i * p + j]).collect())
        .collect();
    // Containment: vars(T) strictly inside vars(T') with the same numeric variables.
    let numeric = |t: &Vec<usize>| -> Vec<usize> {
        let mut v: Vec<usize> = t
            .iter()
            .copied()
            .filter(|&v| design.variables[v].kind == VarKind::Numeric)
            .collect();
        v.sort_unstable();
        v
    };
    let terms = &design.fixed_terms;
    let contains = |a: usize, b: usize| -> bool {
        terms[a].iter().all(|v| terms[b].contains(v))
            && terms[b].iter().any(|v| !terms[a].contains(v))
            && numeric(&terms[a]) == numeric(&terms[b])
    };
    let mut order: Vec<usize> = (0..nterms).collect();
    order.sort_by(|&a, &b| terms[b].len().cmp(&terms[a].len()));
    for &t in &order {
        let containing: Vec<usize> = (0..nterms).filter(|&o| contains(t, o)).collect();
        if containing.is_empty() {
            continue;
        }
        let xcols: Vec<usize> = containing.iter().flat_map(|&o| map[o].clone()).collect();
        if xcols.is_empty() || map[t].is_empty() {
            continue;
        }
        let xs: Vec<Vec<f64>> = xcols.iter().map(|&c| lcol[c].clone()).collect();
        let ys: Vec<Vec<f64>> = map[t].iter().map(|&c| lcol[c].clone()).collect();
        let mut res = lm_residuals(&xs, &ys);
        let mut flat: Vec<f64> = res.iter().flatten().copied().collect();
        zapsmall(&mut flat);
        for (k, col) in res.iter_mut().enumerate() {
            col.copy_from_slice(&flat[k * m..(k + 1) * m]);
        }
        for (&c, col) in map[t].iter().zip(res) {
            lcol[c] = col;
        }
    }
    // Keep the rows of L whose rdX names are X's column names, in X's order.
    let xnames = design.fixed_names();
    let row_idx: Vec<Option<usize>> = xnames
        .iter()
        .map(|nm| rd.iter().position(|c| &c.name == nm))
        .collect();
    map.iter()
        .map(|cols| {
            cols.iter()
                .map(|&c| {
                    row_idx
                        .iter()
                        .map(|ri| ri.map_or(0.0, |i| lcol[c][i]))
                        .collect::<Vec<f64>>()
                })
                .filter(|row: &Vec<f64>| row.iter().map(|v| v.abs()).sum::<f64>() > 1e-8)
                .collect()
        })
        .collect()
}
