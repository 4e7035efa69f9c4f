# Regenerates every reference file in analyzer/tests/reference/:
#   <name>.csv            the dataset
#   <name>.json           lme4 / lmerTest / emmeans results for one or more formulas on it
#   tukey.json            ptukey / qtukey values
#
# Run from anywhere:  Rscript analyzer/tests/reference/generate.R
# Needs Debian's r-cran-lme4, r-cran-lmertest, r-cran-emmeans, r-cran-jsonlite (not needed in CI;
# the outputs are committed). Deterministic: simulated data use set.seed.
#
# Fits use lme4's "bobyqa" (minqa) optimizer with a tiny final trust region so the reference is the
# optimum itself, not lme4's default stopping point; the Rust engine converges just as tightly, so
# the two agree far below the 1e-6 tolerance the tests use.
# emmeans is told to use Satterthwaite degrees of freedom (with pbkrtest installed its default
# would be Kenward-Roger).

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(emmeans)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
file_arg <- sub("^--file=", "", args[grep("^--file=", args)])
out_dir <- if (length(file_arg) == 1) dirname(normalizePath(file_arg)) else "."
emm_options(lmer.df = "satterthwaite")
options(contrasts = c("contr.treatment", "contr.poly"))

ctrl <- lmerControl(
  optimizer = "bobyqa",
  optCtrl = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e6),
  calc.derivs = FALSE,
  check.conv.singular = "ignore"
)

num <- function(x) if (is.na(x) || !is.finite(x)) NULL else unname(x)

fit_one <- function(data, formula, reml = TRUE, emm = NULL) {
  m <- lmerTest::lmer(as.formula(formula), data = data, REML = reml, control = ctrl)
  s <- summary(m)
  co <- s$coefficients
  fixed <- lapply(seq_len(nrow(co)), function(i) list(
    term = rownames(co)[i], estimate = co[i, "Estimate"], se = co[i, "Std. Error"],
    df = co[i, "df"], t = co[i, "t value"], p = co[i, "Pr(>|t|)"]))
  vc <- as.data.frame(VarCorr(m))
  random <- lapply(seq_len(nrow(vc)), function(i) {
    r <- vc[i, ]
    if (is.na(r$var2)) {
      list(group = r$grp, term = if (is.na(r$var1)) "" else r$var1, sd = r$sdcor, variance = r$vcov)
    } else {
      list(group = r$grp, term = r$var1, term2 = r$var2, corr = r$sdcor)
    }
  })
  an <- tryCatch(anova(m, type = 3), error = function(e) NULL)
  anova_rows <- list()
  if (!is.null(an) && nrow(an) > 0) {
    anova_rows <- lapply(seq_len(nrow(an)), function(i) list(
      term = rownames(an)[i], num_df = an[i, "NumDF"], den_df = num(an[i, "DenDF"]),
      f = num(an[i, "F value"]), p = num(an[i, "Pr(>F)"])))
  }
  re <- ranef(m)
  modes <- lapply(names(re), function(g) {
    d <- re[[g]]
    list(group = g, levels = rownames(d),
         terms = colnames(d), values = lapply(seq_len(ncol(d)), function(j) d[[j]]))
  })
  dropped <- attr(getME(m, "X"), "col.dropped")
  out <- list(
    formula = formula, reml = reml, n = nobs(m),
    theta = unname(getME(m, "theta")),
    criterion = if (reml) unname(REMLcrit(m)) else deviance(m),
    loglik = as.numeric(logLik(m)), aic = AIC(m), bic = BIC(m), sigma = sigma(m),
    fixed = fixed, random = random, anova = anova_rows, ranef = modes,
    dropped_columns = if (is.null(dropped)) character(0) else names(dropped)
  )
  if (!is.null(emm)) {
    specs <- strsplit(emm, ":", fixed = TRUE)[[1]]
    e <- emmeans(m, specs = specs)
    es <- as.data.frame(summary(e))
    rows <- lapply(seq_len(nrow(es)), function(i) list(
      levels = lapply(setNames(specs, specs), function(f) as.character(es[i, f])),
      emmean = num(es$emmean[i]), se = num(es$SE[i]), df = num(es$df[i]),
      lower = num(es$lower.CL[i]), upper = num(es$upper.CL[i])))
    pr <- as.data.frame(summary(pairs(e), adjust = "tukey"))
    contrasts <- lapply(seq_len(nrow(pr)), function(i) list(
      contrast = as.character(pr$contrast[i]), estimate = num(pr$estimate[i]),
      se = num(pr$SE[i]), df = num(pr$df[i]), t = num(pr$t.ratio[i]), p = num(pr$p.value[i])))
    out$emmeans <- list(spec = emm, rows = rows, contrasts = contrasts)
  }
  out
}

write_case <- function(name, data, fits) {
  write.csv(data, file.path(out_dir, paste0(name, ".csv")), row.names = FALSE, quote = TRUE)
  res <- lapply(fits, function(f) do.call(fit_one, c(list(data = data), f)))
  writeLines(toJSON(list(dataset = name, fits = res), digits = NA, auto_unbox = TRUE,
                    null = "null", na = "null", pretty = TRUE),
             file.path(out_dir, paste0(name, ".json")))
  cat("wrote", name, "\n")
}

# --- classic lme4 datasets -------------------------------------------------------------------
write_case("dyestuff", as.data.frame(Dyestuff), list(
  list(formula = "Yield ~ 1 + (1 | Batch)"),
  list(formula = "Yield ~ 1 + (1 | Batch)", reml = FALSE)))
write_case("dyestuff2", as.data.frame(Dyestuff2), list(
  list(formula = "Yield ~ 1 + (1 | Batch)"),
  list(formula = "Yield ~ 1 + (1 | Batch)", reml = FALSE)))
write_case("penicillin", as.data.frame(Penicillin), list(
  list(formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  list(formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", reml = FALSE)))
pastes <- as.data.frame(Pastes)[, c("strength", "batch", "cask")]
write_case("pastes", pastes, list(
  list(formula = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
  list(formula = "strength ~ 1 + (1 | batch) + (1 | batch:cask)", reml = FALSE),
  list(formula = "strength ~ 1 + (1 | batch/cask)")))
sleep <- as.data.frame(sleepstudy)[, c("Reaction", "Days", "Subject")]
write_case("sleepstudy", sleep, list(
  list(formula = "Reaction ~ Days + (Days | Subject)"),
  list(formula = "Reaction ~ Days + (Days | Subject)", reml = FALSE),
  list(formula = "Reaction ~ Days + (1 | Subject)")))

# --- covariates with factors: sleepstudy with two derived factors ------------------------------
# group: a between-subject factor (the first nine subjects "a", the rest "b"); cond: a
# within-subject factor alternating over the days. Checks covariate x factor names (Days:groupb),
# Type III tests and EMMs with a covariate (held at its mean, as emmeans does), and the coding of
# a factor slope after a numeric one without an intercept (full dummy coding, as model.matrix).
covs <- sleep
subjects <- levels(covs$Subject)
covs$group <- ifelse(as.integer(covs$Subject) <= 9, "a", "b")
covs$cond <- ifelse(covs$Days %% 2 == 0, "u", "v")
covs$Subject <- as.character(covs$Subject)
write_case("covariates", covs, list(
  list(formula = "Reaction ~ Days * group + (Days | Subject)", emm = "group"),
  list(formula = "Reaction ~ Days * group + cond + (1 | Subject)", reml = FALSE, emm = "group:cond"),
  list(formula = "Reaction ~ Days + (0 + Days + cond | Subject)")))

# --- simulated Likert designs shaped like the paper's ----------------------------------------
simulate_likert <- function(seed, respondents, languages, max_reps, empty = NULL) {
  set.seed(seed)
  scales <- c("R", "I", "A", "S", "E", "C")
  items <- data.frame(item = sprintf("item%02d", 1:60), scale = rep(scales, each = 10),
                      stringsAsFactors = FALSE)
  item_eff <- setNames(rnorm(60, 0, 0.5), items$item)
  scale_eff <- setNames(c(-0.4, 0.1, 0.5, 0.6, -0.1, -0.5), scales)
  resp_eff <- setNames(rnorm(length(respondents), 0, 0.3), respondents)
  rows <- list()
  for (r in respondents) for (l in languages) {
    if (!is.null(empty) && r == empty[1] && l == empty[2]) next
    ir_eff <- rnorm(60, 0, 0.4)
    lang_shift <- if (l == languages[1]) 0 else rnorm(6, 0, 0.3)
    names(lang_shift) <- if (length(lang_shift) == 6) scales else NULL
    for (k in 1:60) {
      reps <- sample.int(max_reps, 1)
      sc <- items$scale[k]
      mu <- 3 + scale_eff[[sc]] + resp_eff[[r]] + item_eff[[k]] + ir_eff[k] +
        (if (length(lang_shift) == 6) lang_shift[[sc]] else 0)
      y <- pmin(5, pmax(1, round(mu + rnorm(reps, 0, 0.8))))
      rows[[length(rows) + 1]] <- data.frame(
        respondent = r, language = l, scale = sc, item = items$item[k],
        instrument = "onet-ip-sf", rating = y, stringsAsFactors = FALSE)
    }
  }
  do.call(rbind, rows)
}

paper_formula <- "rating ~ scale * respondent * language + (1 | item) + (1 | item:respondent)"
likert <- simulate_likert(20240710, c("gpt35", "gemini", "ernie", "spark"), c("en", "zh"), 3)
write_case("likert", likert, list(
  list(formula = paper_formula, emm = "scale:language"),
  list(formula = "rating ~ scale * language + (1 + language | item)", emm = "scale"),
  list(formula = "rating ~ 0 + scale + (0 + language | item)", emm = "scale"),
  list(formula = "rating ~ scale + language - 1 + (1 | item) + (1 | respondent)", reml = FALSE,
       emm = "language")))
likert_empty <- simulate_likert(7, c("gpt35", "gemini", "ernie", "spark"), c("en", "zh"), 3,
                                empty = c("spark", "zh"))
write_case("likert_empty", likert_empty, list(
  list(formula = paper_formula, emm = "respondent:language")))

# --- studentized range ------------------------------------------------------------------------
grid <- expand.grid(q = c(0.5, 1, 2, 3, 3.5, 4, 5, 6, 8), nmeans = c(2, 3, 5, 10, 20),
                    df = c(2, 5, 10, 30, 120, Inf))
grid$p <- ptukey(grid$q, grid$nmeans, grid$df)
qgrid <- expand.grid(p = c(0.5, 0.9, 0.95, 0.99), nmeans = c(2, 3, 5, 10, 20),
                     df = c(2, 5, 10, 30, 120, Inf))
qgrid$q <- qtukey(qgrid$p, qgrid$nmeans, qgrid$df)
enc_df <- function(d) lapply(seq_len(nrow(d)), function(i) {
  r <- as.list(d[i, ])
  if (is.infinite(r$df)) r$df <- NULL
  r
})
writeLines(toJSON(list(ptukey = enc_df(grid), qtukey = enc_df(qgrid)), digits = NA,
                  auto_unbox = TRUE, pretty = TRUE),
           file.path(out_dir, "tukey.json"))
cat("wrote tukey\n")
