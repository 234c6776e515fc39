"""MkDocs hook: generates the Reference pages at build time from the code itself.

reference/cli.md from the argparse parsers, reference/configuration.md from the config
dataclasses and their attribute docstrings, reference/api.md from the declared public API
(node.reference.api_page.PUBLIC_API, rendered by mkdocstrings). Nothing is written to docs/.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the checkout, not an installed copy, is what is documented
    sys.path.insert(0, str(ROOT))

from mkdocs.structure.files import File, Files  # noqa: E402

from node.reference.api_page import render_api_reference  # noqa: E402
from node.reference.cli_page import render_cli_reference  # noqa: E402
from node.reference.config_page import render_config_reference  # noqa: E402

GENERATED = {
    "reference/cli.md": render_cli_reference,
    "reference/configuration.md": render_config_reference,
    "reference/api.md": render_api_reference,
}


def on_files(files: Files, config: Any, **_: Any) -> Files:
    for uri, render in GENERATED.items():
        files.append(File.generated(config, uri, content=render()))
    return files
