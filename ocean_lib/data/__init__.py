"""Training records in Ocean-R1's parquet schema, and the procedural tasks of the miniature study."""

from ocean_lib.data.images import (
    ImageError,
    ImageRef,
    fit_pixels,
    parse_box,
    prepare_images,
    rescale_box_truth,
)
from ocean_lib.data.records import (
    REWARD_FUNCS,
    BadRow,
    DataError,
    LoadReport,
    Record,
    Records,
    load_example,
    load_images,
    read_records,
    write_records,
)

__all__ = [
    "REWARD_FUNCS",
    "BadRow",
    "DataError",
    "ImageError",
    "ImageRef",
    "LoadReport",
    "Record",
    "Records",
    "fit_pixels",
    "load_example",
    "load_images",
    "parse_box",
    "prepare_images",
    "read_records",
    "rescale_box_truth",
    "write_records",
]
