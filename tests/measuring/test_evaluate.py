"""softprompt eval (measuring/evaluate.py): options that need a classification preset say so."""


def test_predictions_need_a_classification_preset(tmp_path, capsys):
    from softprompt.cli.main import main

    assert main(["eval", "--data", str(tmp_path / "x.csv"), "--predictions", str(tmp_path / "p.jsonl")]) == 2
    assert "--predictions need a classification --preset" in capsys.readouterr().err
