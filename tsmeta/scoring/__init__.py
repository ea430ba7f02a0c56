"""How a night's residuals become tail probabilities.

A point's z-score is its residual over its series' residual scale (``tsmeta.meta.calibrate``).
``tails``: a Student-t fitted per cluster to the body of out-of-sample |z|, with the
sample's own far tail kept as knots and a factor per weekday. ``level``: a
point's scale grows with its forecast level, by a power each cluster's data chooses
(counts are noisier when busy). ``statistics``:
what a single point misses (window medians, a point's isolation, a level's onset).
``combine``: the calibrated smallest of those tail probabilities, then the seasonal-naive
veto. ``tables``: every tail read from one cached table over a fixed grid of |z|.
"""

from tsmeta.scoring.combine import fit_veto, fit_windows, naive_log_tail, tail_probability
from tsmeta.scoring.statistics import (
    WINDOWS,
    isolation,
    lower_median,
    neighbours,
    onset,
    window_medians,
)
from tsmeta.scoring.tables import EMP_MIN_EXCEED, t_sf
from tsmeta.scoring.tails import (
    TailModel,
    WindowTails,
    fit_tail,
    fit_weekday_scale,
    two_sided_tail,
    weekday_of,
)

__all__ = ["TailModel", "WindowTails", "fit_tail", "fit_weekday_scale", "weekday_of",
           "fit_windows", "fit_veto",
           "two_sided_tail", "tail_probability", "naive_log_tail", "window_medians", "lower_median",
           "isolation", "neighbours", "onset", "t_sf", "EMP_MIN_EXCEED", "WINDOWS"]  # fmt: skip
