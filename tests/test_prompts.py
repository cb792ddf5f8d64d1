"""The prompt-CSV schema (docs/method.md §5): normalized columns, defaults, selection, one-line errors."""
from __future__ import annotations

import pytest

from utils.errors import UserError
from utils.prompts import read_prompt_table


def write(tmp_path, text: str, name: str = "p.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_public_csvs_normalize(tmp_path):
    t = read_prompt_table("i2p.csv", df_start=2255, df_length=7, empty_prompts="skip")
    assert list(t["case_number"]) == [2255, 2256, 2257, 2258, 2259, 2261]  # I2P case 2260 has an empty prompt
    with pytest.raises(UserError, match="i2p.csv row 2260 column 'prompt' .*: empty prompt"):
        read_prompt_table("i2p.csv", df_start=2255, df_length=7)
    assert t["seed"].iloc[0] == 1345558616 and t["seed_source"].iloc[0] == "evaluation_seed"
    assert list(t["guidance"])[:2] == [7.0, 7.0] and set(t["width"]) == {512}
    assert {"categories", "evaluation_seed", "sd_model"} <= set(t.columns)  # carried along
    coco = read_prompt_table("dataset/coco_30k.csv", df_start=10000, df_length=3)  # the paper's command
    assert list(coco["case_number"]) == [10000, 10001, 10002]
    assert list(coco["guidance"]) == [7.5] * 3 and list(coco["height"]) == [512] * 3


def test_defaults_overrides_and_carried_columns(tmp_path):
    path = write(tmp_path, "adv_prompt,prompt,sd_seed,seed,note\n"
                           "attacked one,original one,5,x,keep me\n"
                           "attacked two,original two,,y,\n")
    t = read_prompt_table(path, guidance_scale=3.0, image_size=64)
    assert list(t["prompt"]) == ["attacked one", "attacked two"]      # adv_prompt wins
    assert list(t["orig_prompt"]) == ["original one", "original two"]  # the original kept beside it
    assert list(t["orig_seed"]) == ["x", "y"]                          # a taken name is kept as orig_<name>
    assert list(t["case_number"]) == [0, 1]                            # no case_number: the row index
    assert list(t["seed"]) == [5, 1] and list(t["seed_source"]) == ["sd_seed", "case_number"]
    assert list(t["guidance"]) == [3.0, 3.0] and list(t["width"]) == [64, 64]
    assert t["note"].iloc[0] == "keep me"


def test_selection_by_position_then_case(tmp_path):
    rows = "".join(f"{c},p{c},{c}\n" for c in range(10, 20))
    path = write(tmp_path, "case_number,prompt,evaluation_seed\n" + rows)
    assert list(read_prompt_table(path, df_start=2, df_length=3)["case_number"]) == [12, 13, 14]
    # to_case is excluded, as in the authors' Ring-A-Bell script (cases 20 to 39 = --from_case 20 --to_case 40)
    assert list(read_prompt_table(path, from_case=15, to_case=17)["case_number"]) == [15, 16]
    assert list(read_prompt_table(path, df_start=4, from_case=12)["case_number"]) == list(range(14, 20))


def test_large_seeds_keep_every_digit(tmp_path):
    path = write(tmp_path, "prompt,evaluation_seed\na,18446744073709551615\nb,\nc,4261553411.0\n")
    t = read_prompt_table(path)
    assert list(t["seed"]) == [2 ** 64 - 1, 1, 4261553411]


@pytest.mark.parametrize("text, kwargs, message", [
    ("a,b\n1,2\n", {}, "has no 'prompt' (or 'adv_prompt') column; its columns are: a, b"),
    ("prompt,evaluation_seed\nfine,1\n  ,2\n", {}, "row 1 column 'prompt' (case_number 1): empty prompt"),
    ("prompt,evaluation_seed\nfine,1.5\n", {}, "row 0 column 'evaluation_seed' (case_number 0): seed must be an integer"),
    ("prompt,evaluation_seed\nfine,-3\n", {}, "seed must be an integer in [0, 2**64), got '-3'"),
    ("prompt,sd_image_width\nfine,500\n", {}, "row 0 column 'sd_image_width' (case_number 0): image size must be a "
                                             "positive multiple of 8"),
    ("prompt,evaluation_guidance\nfine,high\n", {}, "column 'evaluation_guidance' (case_number 0): expected a number"),
    ("case_number,prompt\n3,a\n3,b\n", {}, "case_number 3 appears twice"),
    ("case_number,prompt\nthree,a\n", {}, "row 0 column 'case_number': expected an integer, got 'three'"),
    ("prompt\na\n", {"df_start": 5}, "select no row"),
    ("prompt\na\n", {"image_size": 100}, "--image_size must be a positive multiple of 8"),
    ("prompt\na\n", {"from_case": 3, "to_case": 3}, "--to_case 3 (excluded) must be above --from_case 3"),
    ('prompt,x\n"a,b,c\n', {}, "is not a readable CSV"),
])
def test_bad_tables_fail_in_one_line_naming_file_row_column(tmp_path, text, kwargs, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        read_prompt_table(path, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_empty_prompt_policies(tmp_path):
    with pytest.raises(UserError, match="prompts file nowhere.csv not found"):
        read_prompt_table("nowhere.csv")
    path = write(tmp_path, 'prompt\nfirst\n""\nthird\n')
    assert list(read_prompt_table(path, empty_prompts="skip")["prompt"]) == ["first", "third"]
    assert list(read_prompt_table(path, empty_prompts="keep")["prompt"]) == ["first", "", "third"]


def test_the_paper_i2p_command_reads_every_row_as_the_authors():
    """`generate_images.py --prompts_path dataset/i2p.csv` as written: 4,703 images, case 2260 included.

    The authors' script read I2P with pandas and passed `str(row.prompt)`, so its one empty prompt
    (case 2260) was generated too (from the text 'nan'); our default keeps the row (from the empty
    prompt), so the image count is theirs.
    """
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("generate_images_cli", REPO / "execs" / "generate_images.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = cli.parse_args(["--prompts_path", "dataset/i2p.csv", "--concept", "nudity", "--save_path", "x"])
    assert args.empty_prompts == "keep"
    table = read_prompt_table(args.prompts_path, empty_prompts=args.empty_prompts)
    assert len(table) == 4703 and table["case_number"].is_unique
    assert table.set_index("case_number").loc[2260, "prompt"] == ""
