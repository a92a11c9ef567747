"""MkDocs hook: publish the committed benchmark output (benchmarks/RESULTS*.md, *.png) in the
site under benchmarks/, so the docs link to the very files the benchmark scripts wrote
instead of copies that could drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def on_files(files: Files, config: Any) -> Files:
    for path in sorted(BENCHMARKS.glob("RESULTS*.md")) + sorted(BENCHMARKS.glob("*.png")):
        files.append(
            File(
                f"benchmarks/{path.name}",
                src_dir=str(BENCHMARKS.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
