"""The prompt-CSV schema (docs/method.md §5), in one place: every script reads prompt tables through here.

A prompt table is a CSV with one prompt per row. `read_prompt_table` returns it normalized:

| column      | from (first present)                         | when absent                          |
|-------------|----------------------------------------------|--------------------------------------|
| case_number | `case_number`                                | the row's position in the file       |
| prompt      | `adv_prompt`, `prompt`                       | error                                |
| seed        | `evaluation_seed`, `sd_seed`                 | the row's case_number (see below)    |
| guidance    | `guidance_scale` argument, `evaluation_guidance` | `default_guidance` (7.5)         |
| width       | `image_size` argument, `sd_image_width`      | `default_size` (512)                 |
| height      | `image_size` argument, `sd_image_height`     | `default_size` (512)                 |
| seed_source | which column the seed came from (`evaluation_seed`, `sd_seed` or `case_number`)     |

Every other column of the file is carried along unchanged; an original column whose name is taken by
a normalized one is kept as `orig_<name>` (e.g. `orig_prompt` beside an `adv_prompt`).

Rows without a seed (no seed column, or an empty cell) get `seed = case_number` and
`seed_source = "case_number"`: deterministic, distinct per row, and recorded in every prompts.csv.
(The authors' code would fall back to 42 for every such row.)

Bad input raises `UserError` with one line that names the file, the row and the column.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from utils.datasets import dataset_path
from utils.errors import UserError, os_error_reason
from utils.io import file_sha256 as file_digest  # noqa: F401  (the prompts file's sha256 in run configs)

NORMALIZED = ("case_number", "prompt", "seed", "guidance", "width", "height", "seed_source")
PROMPT_COLUMNS = ("adv_prompt", "prompt")
SEED_COLUMNS = ("evaluation_seed", "sd_seed")
GUIDANCE_COLUMN = "evaluation_guidance"
SIZE_COLUMNS = ("sd_image_width", "sd_image_height")
EMPTY_PROMPTS = ("error", "skip", "keep")
MAX_SEED = 2 ** 64  # torch.Generator.manual_seed accepts 0 <= seed < 2**64


def _cell_text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def _parse_int(text: str):
    """'12' -> 12, '12.0' -> 12 (pandas writes ints as floats next to empty cells); else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return None
    if math.isfinite(f) and f.is_integer() and abs(f) < 2 ** 53:
        return int(f)
    return None


def read_csv_literal(path, what: str = "prompts file", **kwargs) -> pd.DataFrame:
    """`pd.read_csv` with cells read literally: only an empty cell is missing.

    pandas would drop 'NA', 'None', 'null', 'nan', 'N/A' (and more) as missing values; here they
    stay text, so a prompt "None" is generated from "None". A UTF-8 byte-order mark and CRLF line
    ends are accepted. An unreadable file fails in one line naming it. Every CSV of prompts (or
    prompt pairs) is read through here.
    """
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""], encoding="utf-8-sig", **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} {path} is not a readable CSV ({first})")
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {os_error_reason(e)}")


def read_prompt_table(path, df_start: int = 0, df_length: int | None = None, from_case: int | None = None,
                      to_case: int | None = None, *, guidance_scale: float | None = None,
                      image_size: int | None = None, default_guidance: float = 7.5, default_size: int = 512,
                      size_multiple: int = 8, empty_prompts: str = "error") -> pd.DataFrame:
    """Read prompt CSV `path` (a path or a public dataset name) and return the normalized table.

    Selection, in this order: rows `df_start : df_start + df_length` by position in the file (as the
    authors' `--df_start/--df_length`), then cases `from_case <= case_number < to_case` (to_case
    excluded, as in the authors' Ring-A-Bell script: cases 20 to 39 are `from_case=20, to_case=40`;
    either may be None). Only selected rows are checked.

    `guidance_scale` / `image_size`, when given, override the per-row columns for every row.
    `size_multiple`: widths and heights must be divisible by it (the VAE's scale factor, 8 for SD).
    `empty_prompts`: what to do with a row whose prompt is empty ("error" (default), "skip" the row,
    or "keep" it and generate from the empty prompt). I2P has one such row (case 2260); the authors'
    code generated it from the text "nan".
    """
    if empty_prompts not in EMPTY_PROMPTS:
        raise UserError(f"empty_prompts must be one of {', '.join(EMPTY_PROMPTS)}, got {empty_prompts!r}")
    for name, v in (("df_start", df_start), ("df_length", df_length)):
        if v is not None and v < 0:
            raise UserError(f"--{name} must be >= 0, got {v}")
    if from_case is not None and to_case is not None and to_case <= from_case:
        raise UserError(f"--to_case {to_case} (excluded) must be above --from_case {from_case}: no case selected")
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise UserError(f"--guidance_scale must be a finite number, got {guidance_scale}")
    if image_size is not None and (image_size <= 0 or image_size % size_multiple):
        raise UserError(f"--image_size must be a positive multiple of {size_multiple} "
                        f"(the VAE's scale factor), got {image_size}")

    path = dataset_path(path, what="prompts file")
    if path.is_dir():
        raise UserError(f"prompts file {path} is a directory, expected a CSV file")
    key_columns = set(PROMPT_COLUMNS + SEED_COLUMNS + SIZE_COLUMNS + (GUIDANCE_COLUMN, "case_number"))
    # Key columns as text: seeds above 2**53 would lose digits as floats next to an empty cell.
    raw = read_csv_literal(path, dtype={c: str for c in key_columns})
    n_file = len(raw)

    prompt_col = next((c for c in PROMPT_COLUMNS if c in raw.columns), None)
    if prompt_col is None:
        raise UserError(f"prompts file {path} has no 'prompt' (or 'adv_prompt') column; "
                        f"its columns are: {', '.join(map(str, raw.columns))}")

    # 1. Select rows by position, then by case number.
    raw = raw.iloc[df_start:]
    if df_length is not None:
        raw = raw.iloc[:df_length]
    if len(raw) == 0:
        raise UserError(f"--df_start {df_start} / --df_length {df_length} select no row of {path} ({n_file} rows)")
    positions = range(df_start, df_start + len(raw))

    def where(i: int, col: str | None = None) -> str:
        return f"prompts file {path} row {i}" + (f" column {col!r}" if col else "")

    cases = []
    if "case_number" in raw.columns:
        for i, v in zip(positions, raw["case_number"]):
            c = _parse_int(_cell_text(v))
            if c is None:
                raise UserError(f"{where(i, 'case_number')}: expected an integer, got {_cell_text(v)!r}")
            cases.append(c)
    else:
        cases = list(positions)
    keep = [(from_case is None or c >= from_case) and (to_case is None or c < to_case) for c in cases]
    if not any(keep):
        raise UserError(f"no case of {path} rows {df_start}..{df_start + len(raw) - 1} lies in "
                        f"--from_case {from_case} <= case_number < --to_case {to_case}")

    # 2. Normalize the selected rows.
    seed_col = next((c for c in SEED_COLUMNS if c in raw.columns), None)
    records, carried_rows = [], []
    # Carry every other column; the sources of `case_number` / `prompt` are those columns already.
    carried = [c for c in raw.columns if c != "case_number" and not (c == "prompt" == prompt_col)]
    rename = {c: (f"orig_{c}" if c in NORMALIZED else c) for c in carried}
    for (i, row), case, k in zip(zip(positions, raw.to_dict("records")), cases, keep):
        if not k:
            continue
        v = row[prompt_col]
        prompt = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)  # as written
        if not prompt.strip():
            if empty_prompts == "error":
                raise UserError(f"{where(i, prompt_col)} (case_number {case}): empty prompt "
                                f"(pass --empty_prompts skip or keep to accept it)")
            if empty_prompts == "skip":
                continue
        text = _cell_text(row[seed_col]) if seed_col else ""
        if text:
            seed, source = _parse_int(text), seed_col
            if seed is None or not 0 <= seed < MAX_SEED:
                raise UserError(f"{where(i, seed_col)} (case_number {case}): seed must be an integer in "
                                f"[0, 2**64), got {text!r}")
        else:
            seed, source = case, "case_number"
            if not 0 <= seed < MAX_SEED:
                raise UserError(f"{where(i)}: no seed, and its case_number {case} cannot serve as one (negative)")
        if guidance_scale is not None:
            guidance = float(guidance_scale)
        elif GUIDANCE_COLUMN in raw.columns and _cell_text(row[GUIDANCE_COLUMN]):
            text = _cell_text(row[GUIDANCE_COLUMN])
            try:
                guidance = float(text)
            except ValueError:
                guidance = math.nan
            if not math.isfinite(guidance):
                raise UserError(f"{where(i, GUIDANCE_COLUMN)} (case_number {case}): expected a number, got {text!r}")
        else:
            guidance = float(default_guidance)
        size = []
        for col in SIZE_COLUMNS:
            if image_size is not None:
                size.append(int(image_size))
                continue
            text = _cell_text(row[col]) if col in raw.columns else ""
            v = _parse_int(text) if text else default_size
            if v is None or v <= 0 or v % size_multiple:
                raise UserError(f"{where(i, col)} (case_number {case}): image size must be a positive multiple of "
                                f"{size_multiple} (the VAE's scale factor), got {text!r}")
            size.append(v)
        records.append(dict(case_number=case, prompt=prompt, seed=seed, guidance=guidance, width=size[0],
                            height=size[1], seed_source=source))
        carried_rows.append({rename[c]: row[c] for c in carried})
    if not records:
        raise UserError(f"every selected row of {path} has an empty prompt (--empty_prompts skip)")

    table = pd.DataFrame(records)
    if table["case_number"].duplicated().any():
        dup = int(table.loc[table["case_number"].duplicated(), "case_number"].iloc[0])
        raise UserError(f"prompts file {path}: case_number {dup} appears twice in the selected rows "
                        f"(image files are named by case number)")
    extra = pd.DataFrame(carried_rows, columns=[rename[c] for c in carried])
    table = pd.concat([table, extra], axis=1)
    table.attrs["source"] = str(path)
    return table


def prompts_source(path) -> Path:
    """The file `read_prompt_table` would read for `path` (for recording in a config)."""
    return dataset_path(path, what="prompts file")
