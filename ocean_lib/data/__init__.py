"""Training records in Ocean-R1's parquet schema, and the procedural tasks of the miniature study."""

from ocean_lib.data.records import (
    REWARD_FUNCS,
    BadRow,
    DataError,
    ImageRef,
    LoadReport,
    Record,
    Records,
    fit_pixels,
    load_example,
    load_images,
    parse_box,
    read_records,
    rescale_box_truth,
    write_records,
)

__all__ = [
    "REWARD_FUNCS",
    "BadRow",
    "DataError",
    "ImageRef",
    "LoadReport",
    "Record",
    "Records",
    "fit_pixels",
    "load_example",
    "load_images",
    "parse_box",
    "read_records",
    "rescale_box_truth",
    "write_records",
]
