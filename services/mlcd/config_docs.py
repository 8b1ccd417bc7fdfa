"""Generate docs/configuration.md from the Settings model, so the reference cannot drift from the code."""

from __future__ import annotations

from mlcd.config import Settings


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `services/mlcd/config.py` by `python -m mlcd.config_docs`; a test keeps it in step.",
        "Every setting is an environment variable with the `MLCD_` prefix and is optional: unset means the",
        "embedded default that `mlcd up` uses.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{default}`"
        lines.append(f"| `MLCD_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import pathlib

    target = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    target.write_text(render())
    print(f"wrote {target}")
