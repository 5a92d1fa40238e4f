"""The tie-point step's global model (``results/tiepoints/N.model.json``), one typed object.

The tie-point step fits it (:func:`fit_models`: translation, affine and second-order polynomial
of Yan et al. 2016, eqs. 1-3, by least squares with the paper's RMSE, eq. 5, and iterated
3-sigma outlier rejection) and writes it; the flow step reads it and, when it is strong enough
(:meth:`TiePointModel.seed_refusal`), starts from its displacement field
(:meth:`TiePointModel.displacement`); the QC's verdict and the report read its fits. Every one
of them reads the file with :func:`costack.io.files.read_json` and takes it through
:meth:`TiePointModel.from_data`, which refuses a file that is not a model with one line; this
module itself opens no file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from costack.errors import CostackError
from costack.io.grids import Grid, grid_difference

if TYPE_CHECKING:  # pandas costs 0.2 s to import; the flow step reads the model without it
    import pandas as pd

log = logging.getLogger(__name__)

#: coefficients per axis of each model (t of eq. 5)
MODEL_TERMS = {"translation": 1, "affine": 3, "polynomial2": 6}

#: the fix of a --model that is not a model
MODEL_FIX = "give the tie-point step's N.model.json"


def _fit(src: np.ndarray, dst: np.ndarray, name: str) -> np.ndarray:
    """Least-squares coefficients (2 x t) mapping ref (col, row) to sec (col, row)."""
    x, y = src[:, 0], src[:, 1]
    if name == "translation":
        return (dst - src).mean(axis=0)[:, None]
    cols = [np.ones_like(x), x, y]
    if name == "polynomial2":
        cols += [x * y, x * x, y * y]
    design = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return coef.T


def apply_model(name: str, coef: np.ndarray, col: np.ndarray, row: np.ndarray):
    """Secondary (col, row) of reference (col, row) under a fitted model."""
    coef = np.asarray(coef, dtype=np.float64)
    if name == "translation":
        return col + coef[0, 0], row + coef[1, 0]
    terms = [np.ones_like(col), col, row]
    if name == "polynomial2":
        terms += [col * row, col * col, row * row]
    return (sum(c * t for c, t in zip(coef[0], terms, strict=True)),
            sum(c * t for c, t in zip(coef[1], terms, strict=True)))  # fmt: skip


def rmse(src: np.ndarray, dst: np.ndarray, name: str, coef: np.ndarray) -> float:
    """Eq. 5 of Yan et al. 2016: sqrt(sum of squared residual distances / (n - t))."""
    px, py = apply_model(name, coef, src[:, 0], src[:, 1])
    ss = float(((px - dst[:, 0]) ** 2 + (py - dst[:, 1]) ** 2).sum())
    n, t = len(src), MODEL_TERMS[name]
    return math.sqrt(ss / (n - t)) if n > t else float("nan")


def fit_models(
    df: pd.DataFrame, sigma: float = 3.0, label: str = "tie points"
) -> tuple[TiePointModel, pd.DataFrame]:
    """Fit the three models with iterated 3-sigma outlier rejection; choose one.

    The affine is chosen unless the polynomial's RMSE is below 80% of the affine's with at
    least 30 points; with fewer than 6 points (10 for the polynomial) the simpler model is
    used and a warning names the count.
    """
    src = df[["ref_col", "ref_row"]].to_numpy(float)
    dst = df[["sec_col", "sec_row"]].to_numpy(float)
    inlier = np.ones(len(df), bool)
    n = len(df)
    usable = "affine" if n >= 6 else "translation"
    if n < 6:
        log.warning("%s: only %d tie points, falling back to a translation", label, n)
    for _ in range(10):
        coef = _fit(src[inlier], dst[inlier], usable)
        px, py = apply_model(usable, coef, src[:, 0], src[:, 1])
        res = np.hypot(px - dst[:, 0], py - dst[:, 1])
        s = float(np.sqrt(np.mean(res[inlier] ** 2)))
        new = res <= max(sigma * s, 1e-6)
        if new.sum() < max(3, MODEL_TERMS[usable]) or (new == inlier).all():
            break
        inlier = new
    models = {}
    for name in MODEL_TERMS:
        k = int(inlier.sum())
        if k <= MODEL_TERMS[name] or (name == "polynomial2" and k < 10):
            continue
        c = _fit(src[inlier], dst[inlier], name)
        models[name] = {"coefficients": c.tolist(), "rmse": rmse(src[inlier], dst[inlier], name, c),
                        "n": k}  # fmt: skip
    chosen = usable
    if (
        "polynomial2" in models
        and models["polynomial2"]["n"] >= 30
        and models["polynomial2"]["rmse"] < 0.8 * models["affine"]["rmse"]
    ):
        chosen = "polynomial2"
    coef = np.asarray(models[chosen]["coefficients"])
    px, py = apply_model(chosen, coef, src[:, 0], src[:, 1])
    out = df.copy()
    out["residual"] = np.hypot(px - dst[:, 0], py - dst[:, 1])
    out["outlier"] = ~inlier
    result = {"chosen": chosen, "coefficients": models[chosen]["coefficients"],
              "outliers": int((~inlier).sum()), "models": models,
              "convention": "reference (col, row) -> secondary (col, row), grid pixels, "
                            "GDAL convention (first pixel centre at 0.5, 0.5)"}  # fmt: skip
    return TiePointModel(result), out


@dataclass
class TiePointModel:
    """A fitted tie-point model and what the step recorded with it (``data``: the JSON).

    ``data["chosen"]`` names the model used (``none`` when no tie point survived),
    ``data["coefficients"]`` its 2 x t coefficients mapping reference (col, row) to secondary
    (col, row) in grid pixels (GDAL convention), ``data["models"]`` every fit with its RMSE
    (eq. 5) and point count; the step adds the tie-point count, the similarity used, its
    parameters and the mode decision.
    """

    data: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @classmethod
    def none(cls) -> TiePointModel:
        """The model of a pair where no tie point survived."""
        return cls({"chosen": "none", "coefficients": None, "outliers": 0, "models": {}})

    @classmethod
    def from_data(cls, data: Any, source: str | Path) -> TiePointModel:
        """The model of a parsed model JSON (``source`` names its file in messages); one that is
        not a model is a one-line error. :func:`costack.io.files.read_json` reads the file."""
        model = cls(data if isinstance(data, dict) else {}, str(source))
        problem = model._problem()
        if problem:
            raise CostackError("--model", f"{source} is not a tie-point model JSON ({problem})",
                               MODEL_FIX)  # fmt: skip
        return model

    def _problem(self) -> str | None:
        chosen = self.data.get("chosen")
        if chosen == "none":
            return None
        if chosen not in MODEL_TERMS:
            return f"'chosen' is {chosen!r}, not one of none, {', '.join(MODEL_TERMS)}"
        coef = np.asarray(self.data.get("coefficients"), dtype=object)
        if coef.shape != (2, MODEL_TERMS[chosen]):
            return f"its {chosen} coefficients are not 2 x {MODEL_TERMS[chosen]} numbers"
        try:
            if not np.isfinite(coef.astype(float)).all():
                return "its coefficients are not finite"
        except (TypeError, ValueError):
            return "its coefficients are not numbers"
        if not isinstance(self.data.get("models", {}), dict):
            return "'models' is not a mapping"
        return None

    @property
    def chosen(self) -> str:
        """The model used: translation, affine, polynomial2 or none."""
        return str(self.data.get("chosen") or "none")

    @property
    def fitted(self) -> bool:
        """Whether a model was fitted (some tie points survived)."""
        return self.chosen != "none"

    @property
    def coefficients(self) -> np.ndarray | None:
        """The chosen model's 2 x t coefficients, or None."""
        return np.asarray(self.data["coefficients"], dtype=np.float64) if self.fitted else None

    @property
    def tiepoints(self) -> int:
        """Tie points the model was fitted on (0 without a model)."""
        return int(self.data.get("tiepoints", 0) or 0) if self.fitted else 0

    @property
    def fits(self) -> dict[str, dict]:
        """Every model fitted: name -> {coefficients, rmse, n}."""
        return dict(self.data.get("models") or {})

    def apply(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Secondary (col, row) of reference (col, row) under the chosen model."""
        return apply_model(self.chosen, self.coefficients, col, row)

    def displacement(
        self, shape: tuple[int, int], scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The displacement field (dx, dy) of the model on a grid, or None without a model.

        ``scale``: grid pixels per pixel of ``shape`` (a decimated grid, e.g. 4 for the tiled
        flow's coarse pass); the field is then in those coarser pixels.
        """
        if not self.fitted:
            return None
        h, w = shape
        col, row = np.meshgrid((np.arange(w) + 0.5) * scale, (np.arange(h) + 0.5) * scale)
        px, py = self.apply(col, row)
        return ((px - col) / scale).astype(np.float32), ((py - row) / scale).astype(np.float32)

    def require_pair(self, grid: Grid, sec_tif: str | Path) -> None:
        """Refuse (one line, ``--model``) a model fitted on another grid or another secondary
        raster than the flow's: it would start the flow from that pair's field. Models written
        before the step recorded its pair (no ``grid``/``rasters``) are taken as they are."""
        fix = "give this pair's model (results/tiepoints/N.model.json of the same N), or none"
        if "grid" in self.data:
            try:
                fitted = Grid.from_json(self.data["grid"])
            except (KeyError, TypeError, ValueError) as err:
                raise CostackError("--model", f"{self.path} has a malformed grid record "
                                   f"({type(err).__name__}: {err})", fix) from err  # fmt: skip
            why = grid_difference(grid, fitted)
            if why:
                why = why.replace("its ", "the model's ").replace("the first's", "the flow's")
                raise CostackError("--model", f"{self.path} was fitted on another grid ({why})",
                                   fix)  # fmt: skip
        fitted_on = (self.data.get("rasters") or {}).get("secondary")
        if fitted_on and fitted_on != Path(sec_tif).name:
            raise CostackError(
                "--model", f"{self.path} was fitted on {fitted_on}, not {Path(sec_tif).name}", fix
            )

    def seed_refusal(self, min_points: int, max_rmse: float) -> str | None:
        """Why the model is too weak to seed the flow (FlowParams ``seed_min_points``,
        ``seed_max_rmse``), or None when it is strong enough."""
        if not self.fitted:
            return "no model"
        fit = self.fits.get(self.chosen, {})
        n, err = int(fit.get("n", 0)), float(fit.get("rmse", np.inf))
        if n < min_points:
            return f"{n} tie points, fewer than seed_min_points = {min_points}"
        if not err <= max_rmse:
            return f"fit RMSE {err:.2f} px above seed_max_rmse = {max_rmse:.2f}"
        return None
