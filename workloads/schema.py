"""The lake schema: one row per patient, 30 numeric measurements and a diagnosis.

Column names are the Wisconsin Diagnostic Breast Cancer feature names in
snake_case (``"mean radius"`` -> ``"mean_radius"``), so they are valid identifiers
in Parquet, SQL and JSON alike. The label ``malignant`` is 1 for malignant and 0
for benign: the positive class is the one a screening model must find.
"""

from __future__ import annotations

import pyarrow as pa

ID_COLUMN = "patient_id"
LABEL_COLUMN = "malignant"

_WDBC_STATS = (
    "radius", "texture", "perimeter", "area", "smoothness",
    "compactness", "concavity", "concave_points", "symmetry", "fractal_dimension",
)

#: The 30 measurement columns, in schema order (the order models take them in).
FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"mean_{s}" for s in _WDBC_STATS)
    + tuple(f"{s}_error" for s in _WDBC_STATS)
    + tuple(f"worst_{s}" for s in _WDBC_STATS)
)

#: Columns every lake partition holds, in this order.
LAKE_SCHEMA = pa.schema(
    [pa.field(ID_COLUMN, pa.string(), nullable=False)]
    + [pa.field(name, pa.float64()) for name in FEATURE_NAMES]
    + [pa.field(LABEL_COLUMN, pa.int8())]
)


def snake_case(name: str) -> str:
    """Map a scikit-learn WDBC feature name to its lake column name."""
    return name.strip().lower().replace(" ", "_")
