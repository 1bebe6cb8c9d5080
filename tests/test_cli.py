"""Every entry point's command line: --help opens with a description and a command to paste, every option has help
text and shows its default, and a misspelt option or recipe key is one line naming the closest valid one."""

import pytest

import create_dataset
import summarize_results
import test as test_script
import train
from llama_squad import chat, export, general_eval
from llama_squad.cli import dataclass_parser
from llama_squad.tasks import get_task, task_names
from llama_squad.tasks.squad_v2 import official


def parsers():
    """(name, parser, module docstring) of every entry point."""
    found = [
        ("train.py", dataclass_parser(train.ARGUMENTS, train.__doc__)),
        ("test.py", dataclass_parser(test_script.ARGUMENTS, test_script.__doc__)),
        ("chat", dataclass_parser(chat.ARGUMENTS, chat.__doc__)),
        ("general_eval", dataclass_parser(general_eval.ARGUMENTS, general_eval.__doc__)),
        ("summarize_results.py", summarize_results.build_parser()),
        ("export", export.build_parser()),
        ("squad_eval", official.build_parser()),
    ]
    for name in task_names():
        found.append(
            (f"create_dataset.py --task {name}", dataclass_parser([get_task(name).Arguments], create_dataset.__doc__))
        )
    return found


@pytest.mark.parametrize(("name", "parser"), parsers(), ids=[name for name, _ in parsers()])
def test_help_opens_with_a_description_and_a_command_and_every_option_is_explained(name, parser):
    description = parser.format_help().split("options:")[0]
    assert "    python " in description, f"{name}: --help has no ready-to-paste command"
    unexplained = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert unexplained == [], f"{name}: options without help: {unexplained}"
    assert "(default:" in parser.format_help()


@pytest.mark.parametrize(
    ("main", "argv", "line"),
    [
        (train.main, ["--lora_rr", "8"], "error: unknown option --lora_rr (did you mean --lora_r?)"),
        (test_script.main, ["--adpater_path", "x"], "unknown option --adpater_path (did you mean --adapter_path?)"),
        (chat.main, ["--tsk", "multiwoz"], "unknown option --tsk (did you mean --task?)"),
        (summarize_results.main, ["r.csv", "--plott", "x"], "unknown option --plott (did you mean --plot?)"),
        (export.main, ["out", "--push_adaptr", "me/x"], "unknown option --push_adaptr (did you mean --push_adapter?)"),
        (official.main, ["d.json", "p.json", "--na_prob_fle", "n"], "(did you mean --na_prob_file?)"),
        (general_eval.main, ["--taks", "x"], "unknown option --taks (did you mean --tasks?)"),
    ],
)
def test_a_misspelt_option_is_one_line_naming_the_closest(main, argv, line, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and line in err and len(err.strip().splitlines()) == 1


def test_a_misspelt_recipe_key_names_the_file_the_key_and_the_closest(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lora_r: 8\nlearnig_rate: 1.0e-4\n")
    with pytest.raises(SystemExit):
        train.main(["--config", str(recipe)])
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"error: --config {recipe}: unknown key 'learnig_rate' (did you mean learning_rate?)")
    )
