"""GRIB1/GRIB2 files for demos, tests and benchmarks, written with ecCodes from its bundled samples."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import eccodes
import numpy as np

MISSING = 9999.0
"""The sentinel written for missing points (with a bitmap: the file itself stores no value there)."""


@dataclass
class Field:
    """One GRIB message: a regular lat/lon grid, first point at (lat0, lon0), scanning west to east
    then north to south; `values` in that order (Nj rows of Ni), NaN for a missing point."""

    parameter: str = "2t"
    level_type: str = "heightAboveGround"
    level: int = 2
    reference: datetime = datetime(2024, 1, 2, 6, 0)
    step: int = 0
    """In `step_units`; for an accumulation (`tp`) the end of a 0-step range."""
    step_units: str = "h"
    """ecCodes' stepUnits: m, h, D."""
    ni: int = 4
    nj: int = 3
    lat0: float = 90.0
    lon0: float = 0.0
    increment: float = 1.0
    values: np.ndarray | None = None
    """Defaults to 273, 274, ... (one per point)."""
    bits_per_value: int = 24

    def grid_values(self) -> np.ndarray:
        if self.values is None:
            return 273.0 + np.arange(self.ni * self.nj, dtype=np.float64)
        return np.asarray(self.values, dtype=np.float64).ravel()


def grib_message(field: Field, edition: int = 2) -> bytes:
    """The bytes of one message."""
    handle = eccodes.codes_grib_new_from_samples("GRIB2" if edition == 2 else "GRIB1")
    try:
        d = field.increment
        for key, value in (
            ("Ni", field.ni),
            ("Nj", field.nj),
            ("latitudeOfFirstGridPointInDegrees", field.lat0),
            ("longitudeOfFirstGridPointInDegrees", field.lon0),
            ("latitudeOfLastGridPointInDegrees", field.lat0 - (field.nj - 1) * d),
            ("longitudeOfLastGridPointInDegrees", field.lon0 + (field.ni - 1) * d),
            ("iDirectionIncrementInDegrees", d),
            ("jDirectionIncrementInDegrees", d),
            ("typeOfLevel", field.level_type),
            ("level", field.level),
            ("shortName", field.parameter),
            ("dataDate", int(field.reference.strftime("%Y%m%d"))),
            ("dataTime", field.reference.hour * 100 + field.reference.minute),
            ("stepUnits", field.step_units),
        ):
            eccodes.codes_set(handle, key, value)
        if field.parameter == "tp" and edition == 1:
            eccodes.codes_set(handle, "stepType", "accum")
        eccodes.codes_set(handle, "step", field.step)
        eccodes.codes_set(handle, "bitsPerValue", field.bits_per_value)
        values = field.grid_values()
        missing = np.isnan(values)
        if missing.any():
            eccodes.codes_set(handle, "bitmapPresent", 1)
            eccodes.codes_set(handle, "missingValue", MISSING)
            values = np.where(missing, MISSING, values)
        eccodes.codes_set_values(handle, values)
        return bytes(eccodes.codes_get_message(handle))
    finally:
        eccodes.codes_release(handle)


def write_grib(path: Path, fields: Iterable[Field], edition: int = 2) -> Path:
    """A file of one message per field."""
    with path.open("wb") as out:
        for field in fields:
            out.write(grib_message(field, edition))
    return path
