"""Every method as a recipe: which terms of the total loss it uses (methods.py holds the loss of a step). Plain
data without torch, so the config can check `method.name` against it while staying importable for `--help`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Which terms of the total loss a method uses."""

    consistency: bool = False  # L_mt, Mean Teacher
    contrastive: bool = False  # L_sde, SupCon on the labeled views
    threshold: str | None = None  # pseudo-label rule: fixed | flexmatch | freematch | capr
    pl_source: str = "teacher"  # teacher: EMA teacher on u^w, ramped; student: own weak view, constant weight
    strong: bool = True  # student sees a strong view of the unlabeled images
    fairness: bool = False  # FreeMatch's self-adaptive fairness term (single-label)

    @property
    def unlabeled(self) -> bool:
        return self.consistency or self.threshold is not None

    @property
    def labeled_views(self) -> int:
        """Weak views of each labeled image the method trains on: 1 for the FixMatch family (as published); 2 when
        SDE needs a pair or Mean Teacher's labeled consistency the teacher's second view (and for supervised-only,
        whose L_sup is the method's, on both views)."""
        return 1 if self.threshold is not None and self.pl_source == "student" else 2


# FixMatch / FlexMatch / FreeMatch pseudo-label from the student's own weak view with a constant weight, as
# published; the EMA teacher is still kept for evaluation (as USB does).
METHODS: dict[str, Recipe] = {
    "supervised": Recipe(),
    "mean_teacher": Recipe(consistency=True, strong=False),
    "mt_sde": Recipe(consistency=True, contrastive=True, strong=False),
    "mt_capr": Recipe(consistency=True, threshold="capr"),
    "fixmatch": Recipe(threshold="fixed", pl_source="student"),
    "flexmatch": Recipe(threshold="flexmatch", pl_source="student"),
    "freematch": Recipe(threshold="freematch", pl_source="student", fairness=True),
    "clcp_mt": Recipe(consistency=True, contrastive=True, threshold="capr"),
}
