"""What the papers report, as the claims the reports test: each task's claims in the direction the paper measured
(see the papers' figures in the project's method notes), with the notes that go with them.

A claim is one [`~hf_maxsup.report.stats.Claim`] in its task's table: [`PAPER_CLAIMS`] (classifiers, checked by
[`~hf_maxsup.report.classification.write_report`]), [`TRANSLATION_CLAIMS`]
([`~hf_maxsup.report.translation.write_translation_report`]) and [`DISTILLATION_CLAIMS`]
([`~hf_maxsup.report.distillation.write_distillation_report`], the groups being the teachers' labels); its metric is
measured by the task's report and shown through a column of its tables. [`~hf_maxsup.report.stats.paper_checks`]
tests them.
"""

from __future__ import annotations

from .stats import Claim, format_summary

__all__ = [
    "DISTILLATION_CLAIMS",
    "NO_TEACHER",
    "PAPERS_SCALE",
    "PAPER_CLAIMS",
    "TRANSLATION_CLAIMS",
    "maxsup_ls_note",
]

# The label of the students trained on the labels alone.
NO_TEACHER = "no teacher"


def _logit_norm_note(summary: dict) -> str | None:
    """The norm order p of the LS runs' logit normalisation."""
    p = summary.get("ls", {}).get("logit_norm_p", {})
    return f"p = {format_summary(p, 1.0, 1)}, chosen per run on held-out data from 1..10" if p.get("n") else None


def _error_amplification_note(summary: dict) -> str | None:
    """The error-amplification term the LS runs logged during training, which MaxSup does not have."""
    logged = summary.get("ls", {}).get("train_ls_error_amplification", {})
    if not logged.get("n"):
        return None
    return (
        f"the LS runs logged an error-amplification term (1/K)Σ_(z_n>z_y)(z_y − z_n) of "
        f"{format_summary(logged, 1.0, 4)} per example (mean over training), which MaxSup does not have"
    )


# What the papers report of classifiers, each in the direction the paper measured.
PAPER_CLAIMS = (
    Claim("LS lowers ECE compared with CE (Müller et al. 2019)", "ece", "ls", "<", "ce"),
    Claim("LS is more accurate than CE (MaxSup paper, Müller et al. 2019)", "accuracy", "ls", ">", "ce"),
    Claim("MaxSup is more accurate than CE (MaxSup paper)", "accuracy", "maxsup", ">", "ce"),
    Claim("MaxSup accuracy is at least LS's (MaxSup paper)", "accuracy", "maxsup", ">=", "ls"),
    Claim("LS lowers d_within (tighter classes) compared with CE (MaxSup paper)", "d_within", "ls", "<", "ce"),
    Claim(
        "MaxSup lowers d_within compared with CE (MaxSup paper: CE 0.331, MaxSup 0.300)",
        "d_within",
        "maxsup",
        "<",
        "ce",
    ),
    Claim("MaxSup keeps d_within above LS (MaxSup paper)", "d_within", "maxsup", ">", "ls"),
    Claim("LS's inter-class separability R² is above CE's (MaxSup paper: CE 0.445, LS 0.461)", "r2", "ls", ">", "ce"),
    Claim(
        "MaxSup's inter-class separability R² is above LS's (MaxSup paper: LS 0.461, MaxSup 0.497)",
        "r2",
        "maxsup",
        ">",
        "ls",
    ),
    Claim("LS makes AURC worse than CE (Xia et al. 2024)", "aurc", "ls", ">", "ce"),
    Claim(
        "Post-hoc logit normalisation lowers LS's AURC (Xia et al. 2024)",
        "aurc_logit_norm",
        "ls",
        "<",
        "ls",
        metric_b="aurc",
        note=_logit_norm_note,
    ),
    Claim(
        "LS loses linear-probe transfer accuracy against CE (MaxSup paper: CE 81.4, LS 74.6 on CIFAR-10)",
        "linear_probe_digits",
        "ls",
        "<",
        "ce",
    ),
    Claim(
        "MaxSup's linear-probe transfer accuracy is above LS's (MaxSup paper: LS 74.6, MaxSup 81.0)",
        "linear_probe_digits",
        "maxsup",
        ">",
        "ls",
    ),
    Claim(
        "MaxSup is less confident than LS on misclassified examples: no error-amplification term (MaxSup paper)",
        "mean_confidence_wrong",
        "maxsup",
        "<",
        "ls",
        note=_error_amplification_note,
    ),
)
# The papers' own numbers, for scale beside these runs' claims.
PAPERS_SCALE = (
    "For scale: MaxSup paper, ResNet-50 on ImageNet: d_within / R² CE 0.331 / 0.445, LS 0.254 / 0.461, MaxSup "
    "0.300 / 0.497; linear probe on CIFAR-10 CE 81.4, LS 74.6, MaxSup 81.0. Müller et al.: ECE 0.071 → 0.035 with LS "
    "(Inception-v4, ImageNet)."
)


def maxsup_ls_note(summary: dict) -> str | None:
    """How far MaxSup's training can differ from LS's in these runs. The two terms differ by α(z_max − z_y), zero
    exactly on the training rows whose label is the top-1 logit: what decides it is the fraction of misclassified
    training rows over training (when the runs logged it), not the error-amplification term's share of LS's value,
    which understates it (the share, from the LS runs' logged decomposition, when nothing else was logged)."""
    if "maxsup" not in summary or "ls" not in summary:
        return None
    opening = (
        "MaxSup against LS: the two terms differ by α(z_max − z_y), zero on the training rows whose label is the "
        "top-1 logit; on each other row their gradients differ by a vector of norm √2·α, whatever the margin."
    )
    wrong = {label: summary[label].get("train_misclassified", {}) for label in ("ls", "maxsup")}
    if any(value.get("n") for value in wrong.values()):
        rates = ", ".join(f"{label} {format_summary(v, 100.0, 1)} %" for label, v in wrong.items() if v.get("n"))
        return (
            f"{opening} Training rows misclassified, mean over training: {rates}. The smaller that fraction, the "
            "closer the two losses are at equal alpha, and the more their difference is that of their alpha schedules."
        )
    share = summary["ls"].get("train_ls_error_share", {})
    if not share.get("n"):
        return None
    return (
        f"{opening} These runs did not log the fraction of misclassified training rows; the LS runs' error "
        f"amplification was {format_summary(share, 100.0, 2)} % of their logged LS term (mean over training), a "
        "share of the term's value that understates how often the two losses differ. The smaller it is, the more "
        "their difference is that of their alpha schedules."
    )


# Müller, Kornblith, Hinton 2019 (EN-DE Transformer): BLEU improves with LS while the NLL of the references gets
# worse, and the token-level ECE drops from 0.056 to 0.019.
TRANSLATION_CLAIMS = (
    Claim("LS improves BLEU over CE (Müller et al. 2019)", "bleu", "ls", ">", "ce"),
    Claim("LS makes the references' NLL worse than CE's (Müller et al. 2019)", "nll", "ls", ">", "ce"),
    Claim(
        "LS improves token-level calibration: lower ECE of the next-token predictions (Müller et al. 2019: 0.056 → "
        "0.019)",
        "token_ece",
        "ls",
        "<",
        "ce",
    ),
)


# What the papers report of distillation, the groups being the teachers' labels.
DISTILLATION_CLAIMS = (
    Claim(
        "The student of the LS teacher is less accurate than the student of the CE teacher (Müller et al. 2019)",
        "accuracy",
        "ls",
        "<",
        "ce",
    ),
    Claim(
        "The student of the MaxSup teacher is at least as accurate as the student of the LS teacher (MaxSup paper's "
        "argument: MaxSup keeps the class structure)",
        "accuracy",
        "maxsup",
        ">=",
        "ls",
    ),
    Claim(
        "The LS teacher's non-target distribution is flatter than the CE teacher's, i.e. it keeps less class "
        "resemblance (Müller et al. 2019)",
        "teacher_non_target_entropy",
        "ls",
        ">",
        "ce",
    ),
    Claim(
        "The MaxSup teacher's non-target distribution is less flat than the LS teacher's (MaxSup paper)",
        "teacher_non_target_entropy",
        "maxsup",
        "<",
        "ls",
    ),
    Claim(
        "The student of the CE teacher is more accurate than the student trained on the labels alone (distillation "
        "helps)",
        "accuracy",
        "ce",
        ">",
        NO_TEACHER,
    ),
)
