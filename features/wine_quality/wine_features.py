"""The wine-quality features: the 13 chemical measurements of each wine, by wine id.

The offline data is a Parquet file with `wine_id`, `event_timestamp` and one column per measurement
(pipelines/wine_quality_feast/README.md shows how to write it from a wine CSV batch). Its location is
WINE_FEATURES_URI where `feast apply` runs (a path Feast's file offline store can read: an absolute path,
s3:// or gs://): the checkout mlcd applies from is temporary, so a path relative to it would not last.
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

MEASUREMENTS = (
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "color_intensity",
    "hue",
    "od280/od315_of_diluted_wines",
    "proline",
)

wine = Entity(name="wine", join_keys=["wine_id"], value_type=ValueType.INT64)

measurements = FileSource(
    name="wine_measurements",
    path=os.environ.get("WINE_FEATURES_URI", "s3://mlcd-features/wine_quality/wine_features.parquet"),
    timestamp_field="event_timestamp",
)

wine_chemistry = FeatureView(
    name="wine_chemistry",
    entities=[wine],
    ttl=timedelta(days=3650),
    schema=[Field(name=name, dtype=Float64) for name in MEASUREMENTS],
    source=measurements,
)

wine_quality_training = FeatureService(name="wine_quality_training", features=[wine_chemistry])
