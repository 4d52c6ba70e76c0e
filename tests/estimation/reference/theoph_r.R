# Peer reference values for the theophylline first-order-absorption model.
#
# Fits R's datasets::Theoph (the same data as datasets/theophylline/theophylline.csv;
# R's Dose is mg/kg, our AMT = Dose * Wt in mg) with
#   a) nlme::nlme   (ML, first-order conditional estimation / LME approximation)
#   b) lme4::nlmer  (Laplace, nAGQ = 1)
# and writes theoph_r.json next to this script.
#
# Regenerate with:  Rscript tests/estimation/reference/theoph_r.R
# R is NOT needed by CI; the json is committed as a fixed reference.

suppressPackageStartupMessages({
  library(nlme)
  library(lme4)
  library(jsonlite)
})

script_dir <- local({
  f <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(f) == 1L) dirname(normalizePath(f)) else getwd()
})
out_json <- file.path(script_dir, "theoph_r.json")

data("Theoph", package = "datasets")
Theoph_df <- as.data.frame(Theoph)  # plain data.frame for nlmer
start <- c(lKe = -2.5, lKa = 0.5, lCl = -3)

versions <- list(
  R = R.version.string,
  nlme = as.character(packageVersion("nlme")),
  lme4 = as.character(packageVersion("lme4")),
  Matrix = as.character(packageVersion("Matrix")),
  jsonlite = as.character(packageVersion("jsonlite")),
  platform = R.version$platform,
  blas = tryCatch(extSoftVersion()[["BLAS"]], error = function(e) NA_character_),
  lapack = tryCatch(La_version(), error = function(e) NA_character_)
)

## --- sanity check that our bundled csv is this data -----------------------
csv <- file.path(script_dir, "..", "..", "..", "datasets", "theophylline", "theophylline.csv")
data_check <- "bundled csv not found"
if (file.exists(csv)) {
  d <- read.csv(csv, na.strings = ".", stringsAsFactors = FALSE)
  obs <- d[d$EVID == 0, ]
  th <- Theoph_df[order(as.integer(as.character(Theoph_df$Subject)), Theoph_df$Time), ]
  obs <- obs[order(obs$ID, obs$TIME), ]
  ok <- nrow(obs) == nrow(th) &&
    all(obs$ID == as.integer(as.character(th$Subject))) &&
    max(abs(obs$TIME - th$Time)) < 1e-12 &&
    max(abs(obs$DV - th$conc)) < 1e-12 &&
    max(abs(obs$DOSE - th$Dose)) < 1e-12
  doses <- d[d$EVID == 1, ]
  amt_ok <- max(abs(doses$AMT - doses$DOSE * doses$WT)) < 1e-6
  data_check <- if (ok && amt_ok) "identical (ID/TIME/DV/DOSE; AMT == DOSE*WT)" else "MISMATCH"
}

conv_param <- function(fx) {
  # our parameterisation (per kg of body weight for CL and V)
  KE <- exp(fx[["lKe"]]); KA <- exp(fx[["lKa"]]); CL <- exp(fx[["lCl"]])
  list(KA = KA, CL_per_kg = CL, KE = KE, V_per_kg = CL / KE)
}

ebe_list <- function(re) {
  # re: data.frame with rownames = subject, columns lKa, lCl
  subj <- rownames(re)
  o <- order(as.integer(subj))
  lapply(setNames(o, subj[o]), function(i) list(lKa = re[i, "lKa"], lCl = re[i, "lCl"]))
}

## --- a) nlme ----------------------------------------------------------------
nlme_call_str <- function(ctrl_str) paste0(
  "nlme::nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph, ",
  "fixed = lKe + lKa + lCl ~ 1, random = pdDiag(lKa + lCl ~ 1), ",
  "start = c(lKe = -2.5, lKa = 0.5, lCl = -3), method = \"ML\"",
  if (nzchar(ctrl_str)) paste0(", control = ", ctrl_str) else "", ")")

fit_nlme <- function(ctrl) {
  nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph,
       fixed = lKe + lKa + lCl ~ 1, random = pdDiag(lKa + lCl ~ 1),
       start = start, method = "ML", control = ctrl)
}

# Tight control first; nlme's PNLS step fails ("step halving factor reduced below
# minimum in PNLS step") with pnlsTol = 1e-8 here, so relax pnlsTol one decade at a
# time and keep the first that converges. All attempts are recorded in the json.
ladder <- list(
  c(tolerance = 1e-8, pnlsTol = 1e-8, msTol = 1e-10),
  c(tolerance = 1e-8, pnlsTol = 1e-7, msTol = 1e-10),
  c(tolerance = 1e-8, pnlsTol = 1e-6, msTol = 1e-10)
)
ctrl_str <- function(v) paste0("nlmeControl(", paste(sprintf("%s = %g", names(v), v),
                                                      collapse = ", "), ")")
nlme_attempts <- list()
fit_a <- NULL
ctrl_used <- ""
for (v in ladder) {
  f <- tryCatch(fit_nlme(do.call(nlmeControl, as.list(v))), error = function(e) e)
  ok <- !inherits(f, "error")
  nlme_attempts[[length(nlme_attempts) + 1L]] <- list(
    control = ctrl_str(v), converged = ok,
    message = if (ok) "converged" else conditionMessage(f))
  if (ok) { fit_a <- f; ctrl_used <- ctrl_str(v); break }
}
if (is.null(fit_a)) {
  nlme_note <- "all tight controls failed; default nlmeControl() used"
  fit_a <- fit_nlme(nlmeControl())
} else {
  nlme_note <- paste("tightest converging control of the ladder:", ctrl_used)
}
fit_a_default <- fit_nlme(nlmeControl())

nlme_summary <- function(fit, call_str, note) {
  fx <- fixef(fit)
  tt <- summary(fit)$tTable
  s2 <- fit$sigma^2
  D <- pdMatrix(fit$modelStruct$reStruct)[[1]] * s2  # variance scale
  re <- as.data.frame(ranef(fit))
  ll <- as.numeric(logLik(fit))
  list(
    call = call_str,
    note = note,
    method = "ML (Lindstrom-Bates LME approximation)",
    logLik = ll,
    minus2ll = -2 * ll,
    nobs = nobs(fit),
    n_subjects = nrow(re),
    fixed = as.list(fx[c("lKe", "lKa", "lCl")]),
    fixed_se = as.list(tt[c("lKe", "lKa", "lCl"), "Std.Error"]),
    re_variance = list(lKa = D["lKa", "lKa"], lCl = D["lCl", "lCl"]),
    sigma2 = s2,
    sigma = fit$sigma,
    numIter = fit$numIter,
    ebe = ebe_list(re),
    ours = conv_param(fx)
  )
}

res_nlme <- nlme_summary(fit_a, nlme_call_str(ctrl_used), nlme_note)
res_nlme_default <- nlme_summary(fit_a_default, nlme_call_str(""), "default nlmeControl()")
res_nlme_default$ebe <- NULL
res_nlme$control_attempts <- nlme_attempts

## --- b) nlmer ---------------------------------------------------------------
nlmer_base_str <- paste0(
  "lme4::nlmer(conc ~ SSfol(Dose, Time, lKe, lKa, lCl) ~ 0 + lKe + lKa + lCl + ",
  "(0 + lKa | Subject) + (0 + lCl | Subject), data = Theoph, ",
  "start = c(lKe = -2.5, lKa = 0.5, lCl = -3)")

fit_nlmer <- function(control = NULL) {
  if (is.null(control)) control <- nlmerControl()
  nlmer(conc ~ SSfol(Dose, Time, lKe, lKa, lCl) ~
          0 + lKe + lKa + lCl + (0 + lKa | Subject) + (0 + lCl | Subject),
        data = Theoph_df, start = start, control = control)
}

nlmer_summary <- function(fit, call_str, note) {
  fx <- fixef(fit)
  # The finite-difference Hessian of the Laplace deviance is not positive definite for
  # this fit (the nlmer objective is noisy at the 1e-4 level), so use the RX-based
  # (conditional on theta) covariance explicitly rather than via a warning fallback.
  se <- sqrt(diag(as.matrix(vcov(fit, use.hessian = FALSE))))
  names(se) <- names(fx)
  vc <- as.data.frame(VarCorr(fit))
  getv <- function(v) vc$vcov[!is.na(vc$var1) & vc$var1 == v & is.na(vc$var2)][1]
  re <- ranef(fit)$Subject
  ll <- as.numeric(logLik(fit))
  list(
    call = call_str,
    note = note,
    method = "Laplace (nAGQ = 1)",
    logLik = ll,
    minus2ll = -2 * ll,
    deviance = deviance(fit),
    nobs = nobs(fit),
    n_subjects = nrow(re),
    fixed = as.list(fx[c("lKe", "lKa", "lCl")]),
    fixed_se = as.list(se[c("lKe", "lKa", "lCl")]),
    fixed_se_source = "vcov(fit, use.hessian = FALSE) (RX-based)",
    re_variance = list(lKa = getv("lKa"), lCl = getv("lCl")),
    sigma2 = sigma(fit)^2,
    sigma = sigma(fit),
    theta = as.list(getME(fit, "theta")),
    feval = fit@optinfo$feval,
    optimizer_message = fit@optinfo$message,
    optimizer_messages = fit@optinfo$conv$lme4$messages,
    ebe = ebe_list(as.data.frame(re)),
    ours = conv_param(fx)
  )
}

fit_b <- fit_nlmer()
res_nlmer <- nlmer_summary(fit_b, paste0(nlmer_base_str, ")"), "default nlmerControl() (Nelder_Mead)")

# Tighter optimizer settings. Note: optCtrl tolerances for Nelder_Mead do not tighten
# nlmer's second stage, because lme4:::optwrap sets an absolute parameter tolerance
# xt = 5e-4 * xst there, which dominates; an explicit stage-2 Nelder_Mead with tiny xt
# fails to converge in 1e5 evaluations (the objective is noisy). So other optimizers are
# tried instead; none reaches a lower deviance than the default here.
tight_variants <- list(
  bobyqa_tight = list(
    ctrl = nlmerControl(optimizer = "bobyqa",
                        optCtrl = list(rhoend = 1e-10, maxfun = 1e5)),
    str = "nlmerControl(optimizer = \"bobyqa\", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))"),
  nm_then_bobyqa_tight = list(
    ctrl = nlmerControl(optimizer = c("Nelder_Mead", "bobyqa"),
                        optCtrl = list(rhoend = 1e-10, maxfun = 1e5)),
    str = paste0("nlmerControl(optimizer = c(\"Nelder_Mead\", \"bobyqa\"), ",
                 "optCtrl = list(rhoend = 1e-10, maxfun = 1e5))"))
)
res_nlmer_tight <- list()
for (nm in names(tight_variants)) {
  v <- tight_variants[[nm]]
  f <- tryCatch(suppressWarnings(fit_nlmer(v$ctrl)), error = function(e) e)
  if (inherits(f, "error")) {
    res_nlmer_tight[[nm]] <- list(call = paste0(nlmer_base_str, ", control = ", v$str, ")"),
                                  error = conditionMessage(f))
  } else {
    res_nlmer_tight[[nm]] <- nlmer_summary(f, paste0(nlmer_base_str, ", control = ", v$str, ")"),
                                           nm)
  }
}

out <- list(
  description = paste(
    "Peer reference fits of datasets::Theoph (12 subjects, 132 observations) with",
    "conc ~ SSfol(Dose, Time, lKe, lKa, lCl): Dose in mg/kg, conc in mg/L, time in h;",
    "random effects on lKa and lCl (diagonal), additive residual error.",
    "minus2ll = -2*logLik including the n*log(2*pi) constant.",
    "re_variance are variances (SD^2) of the random effects on the log scale.",
    "'ours': KA = exp(lKa) [1/h], CL_per_kg = exp(lCl) [L/h/kg], KE = exp(lKe) [1/h],",
    "V_per_kg = CL_per_kg/KE [L/kg]. For the mg-dose csv (AMT = Dose*Wt),",
    "CL = CL_per_kg*WT and V = V_per_kg*WT, i.e. the model is per-kg, not a flat CL/V."),
  generated = format(Sys.time(), "%Y-%m-%dT%H:%M:%S%z"),
  versions = versions,
  data_check = data_check,
  nlme = res_nlme,
  nlme_default_control = res_nlme_default,
  nlmer = res_nlmer,
  nlmer_tight = res_nlmer_tight
)

writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null",
                  na = "null"), out_json)
cat("wrote", out_json, "\n")
cat(sprintf("nlme : -2LL %.10f  fixed %s\n", res_nlme$minus2ll,
            paste(sprintf("%.8f", unlist(res_nlme$fixed)), collapse = " ")))
cat(sprintf("nlmer: -2LL %.10f  fixed %s\n", res_nlmer$minus2ll,
            paste(sprintf("%.8f", unlist(res_nlmer$fixed)), collapse = " ")))
