"""Save a finished request's output files beside the batch: images named by job and index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from jobs.outputs import ModelOutput
from jobs.record import JobRecord, OutputFile
from runner.fal.downloads import download_file, extension_for_content_type
from runner.ledger.batch_info import BatchInfo
from runner.steps.folder import BatchFolder


def save_outputs(
    http: httpx.Client, batch: BatchInfo, record: JobRecord, result: dict[str, Any], max_bytes: int
) -> list[OutputFile]:
    """Download every image of `result` to `images/<stem>_<n>.<ext>` (`Job.file_stem`), each all or nothing.

    Raises DownloadError (see `download_file`), or ValueError when `result`
    is not a model output.
    """
    try:
        output = ModelOutput.model_validate(result)
    except ValidationError as exc:
        raise ValueError(f"the result is not a model output: {exc.error_count()} problem(s)") from None
    folder = BatchFolder(Path(batch.folder))
    folder.prepare()
    saved = []
    for index, image in enumerate(output.images):
        dest = folder.image_path(record.job.file_stem, index, extension_for_content_type(image.content_type))
        got = download_file(http, image.url, dest, max_bytes, image.content_type)
        real = dest.with_suffix(extension_for_content_type(got.content_type))
        if real != dest:  # fal named no type, or a vague one: name the file by its bytes
            os.replace(dest, real)
        relative = real.relative_to(folder.path).as_posix()
        saved.append(OutputFile(index, relative, _shown_url(image.url), got.content_type, got.width, got.height,
                                got.size_bytes, output.seed_of(index)))  # fmt: skip
    return saved


def _shown_url(url: str) -> str:
    # A data URI output would put megabytes into the ledger and the report.
    return url.partition(",")[0] + ",..." if url.startswith("data:") else url
