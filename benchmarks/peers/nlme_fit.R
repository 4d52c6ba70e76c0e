# Peer benchmark: fit one of pmxgen's NONMEM-style csv files with R's nlme (method = "ML").
#
# Usage:  Rscript benchmarks/peers/nlme_fit.R CSV MODEL [CONTROL]
#
#   CSV      columns ID,TIME,DV,AMT,EVID,MDV,CMT,... ; one oral dose per subject at time 0
#            (EVID = 1, DV '.'), observations EVID = 0.
#   MODEL    theoph      conc ~ SSfol(Dose, TIME, lKe, lKa, lCl), Dose = AMT/WT (mg/kg),
#                        random = pdDiag(lKa + lCl ~ 1), additive error.
#            oral1_prop  1-cmt oral first-order absorption in lKA, lCL, lV (KE = CL/V),
#                        random = pdDiag(lKA + lCL + lV ~ 1), proportional error
#                        weights = varPower(fixed = 1); start log(c(KA = 1, CL = 3, V = 25)).
#            oral1_comb  as oral1_prop with combined error weights = varConstProp(), i.e.
#                        SD = sqrt(add^2 + (prop*f)^2) (NONMEM-style combined error).
#   CONTROL  auto (default): default nlmeControl(); if that errors or does not converge,
#                        the "relaxed" control below; for oral1_prop, if that fails too,
#                        default control on the data less observations with DV <= 0
#                        ("dropneg"; reported in dropped_nonpositive_dv and message).
#            default | relaxed | dropneg  only that one.
#            relaxed = nlmeControl(maxIter = 200, pnlsMaxIter = 20, msMaxIter = 200,
#                                  returnObject = TRUE)
#   Note: on datasets/sim_1cmt_oral_1000 (simulated with an additive error component, 7
#   of 8000 DV <= 0) the pure-proportional nlme fit fails on the full data with every
#   control tried ("step halving factor reduced below minimum in PNLS step" or
#   "Singularity in backsolve"), and converges once those 7 rows are dropped.
#
# Only the nlme() call is timed (system.time: "seconds" is elapsed, "cpu_seconds" user+sys,
# which is less sensitive to other load on the machine). Prints exactly ONE line of JSON on
# stdout: {"model", "seconds", "minus2ll", "fixed", "converged", "message", ...}; on any
# error it still prints that line with converged = false and the error message.
# Needs only base R and nlme (JSON is written by hand).

json_str <- function(s) {
  s <- gsub("\\\\", "\\\\\\\\", s)
  s <- gsub("\"", "\\\\\"", s)
  s <- gsub("\n", "\\\\n", s)
  s <- gsub("\r", "\\\\r", s)
  s <- gsub("\t", "\\\\t", s)
  s <- gsub("[[:cntrl:]]", " ", s)
  paste0("\"", s, "\"")
}

to_json <- function(x) {
  if (is.null(x)) return("null")
  if (is.list(x)) {
    inner <- vapply(x, to_json, "")
    if (!is.null(names(x))) {
      return(paste0("{", paste0(json_str(names(x)), ":", inner, collapse = ","), "}"))
    }
    return(paste0("[", paste(inner, collapse = ","), "]"))
  }
  one <- function(v) {
    if (is.na(v)) return("null")
    if (is.logical(v)) return(if (v) "true" else "false")
    if (is.numeric(v)) {
      if (!is.finite(v)) return("null")
      # shortest of 15/17 significant digits that round-trips the double
      s <- sprintf("%.15g", v)
      if (as.numeric(s) != v) s <- sprintf("%.17g", v)
      return(s)
    }
    json_str(as.character(v))
  }
  if (length(x) == 1L && is.null(names(x))) return(one(x))
  vals <- vapply(seq_along(x), function(i) one(x[[i]]), "")
  if (!is.null(names(x))) return(paste0("{", paste0(json_str(names(x)), ":", vals, collapse = ","), "}"))
  paste0("[", paste(vals, collapse = ","), "]")
}

args <- commandArgs(trailingOnly = TRUE)
result <- list(model = if (length(args) >= 2L) args[[2]] else NA_character_,
               seconds = NA_real_, minus2ll = NA_real_, fixed = NULL,
               converged = FALSE, message = "")

oral1_expr <- quote(AMT * exp(lKA) / (exp(lV) * (exp(lKA) - exp(lCL) / exp(lV))) *
                      (exp(-exp(lCL) / exp(lV) * TIME) - exp(-exp(lKA) * TIME)))
# analytic gradient (as SSfol has) so nlme does not fall back to finite differences
oral1 <- deriv(oral1_expr, c("lKA", "lCL", "lV"),
               function.arg = c("AMT", "TIME", "lKA", "lCL", "lV"))

relaxed_ctrl <- function() nlmeControl(maxIter = 200, pnlsMaxIter = 20, msMaxIter = 200,
                                       returnObject = TRUE)
relaxed_str <- "nlmeControl(maxIter = 200, pnlsMaxIter = 20, msMaxIter = 200, returnObject = TRUE)"

read_nm <- function(path) {
  if (!file.exists(path)) stop("csv not found: ", path)
  d <- read.csv(path, na.strings = ".", stringsAsFactors = FALSE)
  names(d) <- toupper(names(d))
  need <- c("ID", "TIME", "DV", "AMT", "EVID")
  miss <- setdiff(need, names(d))
  if (length(miss)) stop("csv lacks columns: ", paste(miss, collapse = ", "))
  doses <- d[d$EVID == 1, ]
  if (anyDuplicated(doses$ID)) stop("more than one dose record for some subject")
  if (any(doses$TIME != 0)) stop("dose not at time 0 for some subject")
  obs <- d[d$EVID == 0 & !is.na(d$DV), ]
  if ("MDV" %in% names(obs)) obs <- obs[obs$MDV == 0, ]
  obs$AMT <- doses$AMT[match(obs$ID, doses$ID)]
  if (anyNA(obs$AMT)) stop("observations for a subject without a dose record")
  obs
}

model_error <- function(model) {
  switch(model,
         theoph = NULL,
         oral1_prop = varPower(fixed = 1),
         oral1_comb = varConstProp())
}

fit_once <- function(model, dat, ctrl) {
  warns <- character(0)
  fit <- NULL
  err <- NULL
  tm <- system.time(
    fit <- tryCatch(withCallingHandlers(
      if (model == "theoph") {
        nlme(DV ~ SSfol(Dose, TIME, lKe, lKa, lCl), data = dat,
             fixed = lKe + lKa + lCl ~ 1, random = pdDiag(lKa + lCl ~ 1),
             groups = ~ID, start = c(lKe = -2.5, lKa = 0.5, lCl = -3),
             method = "ML", control = ctrl)
      } else {
        nlme(DV ~ oral1(AMT, TIME, lKA, lCL, lV), data = dat,
             fixed = lKA + lCL + lV ~ 1, random = pdDiag(lKA + lCL + lV ~ 1),
             groups = ~ID, start = c(lKA = log(1), lCL = log(3), lV = log(25)),
             weights = model_error(model), method = "ML", control = ctrl)
      },
      warning = function(w) {
        warns <<- c(warns, conditionMessage(w))
        invokeRestart("muffleWarning")
      }), error = function(e) { err <<- conditionMessage(e); NULL })
  )
  # nlme's own non-convergence (a warning only under returnObject = TRUE); other warnings,
  # e.g. an intermediate LME step's nlminb message, are reported but do not count.
  fatal <- grepl("without convergence|step halving factor", warns)
  list(fit = fit, seconds = round(tm[["elapsed"]], 4),
       cpu_seconds = round(tm[["user.self"]] + tm[["sys.self"]], 4), error = err,
       converged = is.null(err) && !any(fatal), warnings = warns)
}

residual_sd <- function(model, fit) {
  s <- fit$sigma
  if (model == "theoph") return(list(add_sd = s))
  if (model == "oral1_prop") return(list(prop_sd = s))
  cp <- coef(fit$modelStruct$varStruct, unconstrained = FALSE)
  list(add_sd = s * abs(cp[["const"]]), prop_sd = s * abs(cp[["prop"]]))
}

main <- function() {
  if (length(args) < 2L) {
    stop("usage: Rscript nlme_fit.R CSV MODEL [auto|default|relaxed|dropneg]")
  }
  csv <- args[[1]]
  model <- args[[2]]
  mode <- if (length(args) >= 3L) args[[3]] else "auto"
  if (!model %in% c("theoph", "oral1_prop", "oral1_comb")) stop("unknown MODEL: ", model)
  if (!mode %in% c("auto", "default", "relaxed", "dropneg")) stop("unknown CONTROL: ", mode)
  suppressPackageStartupMessages(library(nlme))
  result$r_version <<- R.version.string
  result$nlme_version <<- as.character(packageVersion("nlme"))

  dat <- read_nm(csv)
  if (model == "theoph") {
    if (!"WT" %in% names(dat)) stop("theoph model needs a WT column")
    dat$Dose <- dat$AMT / dat$WT
  }
  result$nobs <<- nrow(dat)
  result$n_subjects <<- length(unique(dat$ID))
  result$dropped_nonpositive_dv <<- 0L

  steps <- list(
    default = list(control = "nlmeControl()", ctrl = function() nlmeControl(), drop = FALSE),
    relaxed = list(control = relaxed_str, ctrl = relaxed_ctrl, drop = FALSE),
    dropneg = list(control = "nlmeControl()", ctrl = function() nlmeControl(), drop = TRUE))
  plan <- switch(mode,
                 auto = if (model == "oral1_prop") c("default", "relaxed", "dropneg")
                        else c("default", "relaxed"),
                 mode)
  attempts <- list()
  total <- 0
  got <- NULL
  for (nm in plan) {
    st <- steps[[nm]]
    d <- if (st$drop) dat[dat$DV > 0, ] else dat
    r <- fit_once(model, d, st$ctrl())
    total <- total + r$seconds
    msg <- if (!is.null(r$error)) r$error
           else if (r$converged) "converged" else paste(r$warnings, collapse = "; ")
    attempts[[length(attempts) + 1L]] <- list(
      control = st$control, dropped_nonpositive_dv = nrow(dat) - nrow(d),
      converged = r$converged, seconds = r$seconds, cpu_seconds = r$cpu_seconds,
      message = msg,
      warnings = if (length(r$warnings)) as.list(r$warnings) else NULL)
    if (!is.null(r$fit)) {
      got <- r
      got$control <- st$control
      got$ndrop <- nrow(dat) - nrow(d)
      got$nobs <- nrow(d)
    }
    if (r$converged) break
  }
  result$attempts <<- attempts
  result$seconds_all_attempts <<- total
  if (is.null(got)) {
    result$message <<- paste(vapply(attempts, function(a) paste0(a$control, ": ", a$message), ""),
                             collapse = " | ")
    return(invisible())
  }
  fit <- got$fit
  s2 <- fit$sigma^2
  D <- pdMatrix(fit$modelStruct$reStruct)[[1]] * s2
  result$seconds <<- got$seconds
  result$cpu_seconds <<- got$cpu_seconds
  result$minus2ll <<- -2 * as.numeric(logLik(fit))
  result$fixed <<- as.list(fixef(fit))
  result$fixed_se <<- as.list(summary(fit)$tTable[, "Std.Error"])
  result$re_variance <<- as.list(diag(D))
  result$sigma2 <<- s2
  result$residual <<- residual_sd(model, fit)
  result$control <<- got$control
  result$nobs <<- got$nobs
  result$dropped_nonpositive_dv <<- got$ndrop
  result$n_iter <<- fit$numIter
  result$converged <<- got$converged
  result$message <<- paste0(
    if (got$converged) "converged" else paste(got$warnings, collapse = "; "),
    if (got$ndrop > 0) sprintf(" (after dropping %d observations with DV <= 0; full data failed)",
                               got$ndrop) else "")
}

tryCatch(main(), error = function(e) {
  result$converged <<- FALSE
  result$message <<- conditionMessage(e)
})
cat(to_json(result), "\n", sep = "")
