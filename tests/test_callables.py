"""import_callable: MODULE:FUNCTION and path/file.py:FUNCTION specs, without touching sys.path."""

from __future__ import annotations

import sys

import pytest

from ttakit.callables import call_spec, import_callable, is_callable_spec
from ttakit.errors import ModelLoadError


def test_a_file_path_spec_imports_the_file_and_registers_it_once(tmp_path):
    path = tmp_path / "my_det_model.py"
    path.write_text("from dataclasses import dataclass\n\n@dataclass\nclass Cfg:\n    x: int = 3\n\n"
                    "def build():\n    return Cfg()\n")
    before = list(sys.path)
    fn = import_callable(f"{path}:build")
    assert fn().x == 3 and sys.path == before
    assert import_callable(f"{path}:build") is fn  # the same module, not run again
    assert sys.modules[fn.__module__].__file__ == str(path)


def test_a_dotted_module_under_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "mypkg_xyz").mkdir()
    (tmp_path / "mypkg_xyz" / "models_abc.py").write_text("def make():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    assert import_callable("mypkg_xyz.models_abc:make")() == 42 and sys.path == before
    monkeypatch.delitem(sys.modules, "mypkg_xyz.models_abc")


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_xyz:f", "model 'no_such_module_xyz:f': cannot import 'no_such_module_xyz'"),
    ("missing/dir/file.py:f", "not found"),
    ("ttakit.models:no_such_fn", "'ttakit.models' has no callable 'no_such_fn'"),
    ("ttakit.models", "expected MODULE:FUNCTION or path/file.py:FUNCTION"),
])
def test_errors_say_what_is_missing(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        import_callable(spec)


def test_an_import_error_inside_the_module_is_reported_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "broken_mod_q.py").write_text("import no_such_dependency_q\n\ndef f():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="No module named 'no_such_dependency_q'"):
        import_callable("broken_mod_q:f", "segmenter")
    with pytest.raises(ModelLoadError, match="^segmenter 'broken_mod_q.py:f'.*no_such_dependency_q"):
        import_callable("broken_mod_q.py:f", "segmenter")
    assert "broken_mod_q" not in sys.modules


def test_is_callable_spec():
    assert is_callable_spec("a.b:c") and is_callable_spec("x/y.py:load")
    assert not is_callable_spec("torchvision:fcos_resnet50_fpn") and not is_callable_spec("fcos_resnet50_fpn")


def test_call_spec_passes_weights_only_when_given(tmp_path):
    path = tmp_path / "loaders_w.py"
    path.write_text("def plain():\n    return 1\n\ndef with_weights(weights=None):\n    return weights\n")
    assert call_spec(f"{path}:plain") == 1 and call_spec(f"{path}:with_weights", "w.pt") == "w.pt"
    with pytest.raises(ModelLoadError, match="detector '.*:plain' takes no weights argument"):
        call_spec(f"{path}:plain", "w.pt", "detector")
