"""No import circles among moldwatch's own modules (bench/import_graph.py), and the check can fail."""
from bench.import_graph import ROOT, circles, import_edges, module_files


def test_model_store_and_service_import_no_circle() -> None:
    edges = import_edges(module_files(ROOT))
    assert circles({module: set(targets) for module, targets in edges.items()}) == []


def test_the_check_sees_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
