import softprompt


def test_public_api_is_exactly_all():
    public = {name for name in vars(softprompt) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(softprompt, name)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(softprompt.__all__)
    assert all(hasattr(softprompt, name) for name in softprompt.__all__)
