"""Checking and lowering: what type-checks, the DAG each stdlib strategy lowers to, the passes."""

import networkx as nx
import pytest
from conftest import SHIPPED, check_text

import ttcl
from ttcl import ast
from ttcl.parser import parse
from ttcl.passes import PASSES, PassContext, fold_constants, fuse_repeated_samples, inline_strategies

HEADER = """
import "parallel"
import "search"
import "revision"
model policy = llama("smollm2-135m")
verifier prm = self_verify(policy)
"""


def compile_body(body: str, **kw) -> ttcl.Program:
    return ttcl.compile(HEADER + f"program main = {body}\n", **kw)


def ops(prog: ttcl.Program) -> list[str]:
    g = prog.graph
    return [g.nodes[n]["op"] for n in nx.lexicographical_topological_sort(g)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_check_clean(path):
    check_text(path.read_text(), str(path))


# ---- DAG shapes of the stdlib strategies -------------------------------------------------


@pytest.mark.parametrize(
    "call, expected",
    [
        ("majority(8)", ["question", "sample", "vote", "output"]),
        ("best_of_n(8, prm)", ["question", "sample", "best", "output"]),
        ("weighted_best_of_n(8, prm)", ["question", "sample", "weighted_vote", "output"]),
        ("beam_search(16, prm)", ["question", "beam", "weighted_vote", "output"]),
        ("lookahead_search(16, prm, k=3)", ["question", "lookahead", "weighted_vote", "output"]),
        ("diverse_tree_search(16, prm)", ["question", "dvts", "weighted_vote", "output"]),
        ("sequential_revisions(8, prm)", ["question", "revise", "weighted_vote", "output"]),
    ],
)
def test_linear_strategies(call, expected):
    prog = compile_body(call)
    assert ops(prog) == expected
    assert nx.is_directed_acyclic_graph(prog.graph)


def test_strategy_parameters_reach_the_nodes():
    g = compile_body("beam_search(16, prm, width=8)").graph
    beam = next(n for n in g if g.nodes[n]["op"] == "beam")
    assert g.nodes[beam]["params"] == {"n": 16, "v": "prm", "width": 8, "depth": 40, "model": "policy"}
    assert g.nodes[beam]["origin"][0].startswith("beam_search@")
    assert g.nodes[beam]["span"].path.endswith("search.ttcl")


def test_parallel_revisions_are_p_chains_of_k():
    g = compile_body("parallel_revisions(4, 3, prm)").graph
    chains = [n for n in g if g.nodes[n]["op"] == "revise"]
    assert len(chains) == 3 and all(g.nodes[n]["params"]["k"] == 4 for n in chains)
    union = next(n for n in g if g.nodes[n]["op"] == "union")
    assert sorted(g.predecessors(union)) == sorted(chains)
    assert g.graph["generations"] == 12


def test_revision_ratio_divides_the_budget():
    g = compile_body("revision_ratio(16, 4, prm)").graph
    assert [g.nodes[n]["params"]["k"] for n in g if g.nodes[n]["op"] == "revise"] == [4, 4, 4, 4]


def test_design_card_example():
    prog = ttcl.load("programs/revise_then_beam.ttcl")
    assert ops(prog) == ["question", "revise", "beam", "vote", "output"]
    assert prog.ir.generations == 20


def test_match_lowers_to_guarded_arms_with_probes():
    prog = ttcl.load("programs/per_difficulty.ttcl")
    g = prog.graph
    head = next(n for n in g if g.nodes[n]["op"] == "difficulty")
    merge = next(n for n in g if g.nodes[n]["op"] == "merge")
    guards = sorted(tuple(g.edges[u, merge]["guard"]) for u in g.predecessors(merge))
    assert guards == [(1, 2), (3,), (4, 5)]
    probes = [v for v in g.successors(head) if g.edges[head, v].get("probe")]
    assert len(probes) == 3  # the probe pool joins each arm before its selector
    assert all(g.nodes[v]["op"] == "union" for v in probes)
    assert all("guard" in g.edges[head, v] for v in g.successors(head))
    assert prog.ir.generations == 4 + 16  # probes + the costliest arm


def test_wildcard_takes_the_remaining_bins():
    g = compile_body("match difficulty(prm, bins=4) { 2 => majority(2)  _ => majority(4) }").graph
    merge = next(n for n in g if g.nodes[n]["op"] == "merge")
    assert sorted(g.edges[u, merge]["guard"] for u in g.predecessors(merge)) == [[1, 3, 4], [2]]


def test_union_and_repeat():
    g = compile_body("(majority(2) + best_of_n(3, prm)) * 2 |> vote").graph
    assert sum(g.nodes[n]["op"] == "sample" for n in g) == 4
    assert g.graph["generations"] == 10


def test_default_model_is_the_embedded_one():
    prog = ttcl.compile("program main = sample(4) |> vote")
    assert prog.ir.models == {"policy": {"kind": "llama", "path": "smollm2-135m"}}


def test_params_bind_and_rebind():
    prog = ttcl.load("programs/bon.ttcl")
    assert prog.params == {"n": 16} and prog.ir.generations == 16
    assert prog.bind(n=32).ir.generations == 32
    assert ttcl.load("programs/bon.ttcl", params={"n": "4"}).ir.generations == 4


@pytest.mark.parametrize(
    "params, message",
    [
        ({"m": 3}, "has no parameter `m`"),
        ({"n": "x"}, "must be int"),
        ({"n": 0}, "must be at least 1"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(ttcl.TTCLError, match=message):
        ttcl.load("programs/bon.ttcl", params=params)


# ---- checker messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ("vote |> sample(4)", "`sample(4)` expects a Question or a Pool, but `vote` gives an Answer"),
        ("sample(4) |> vote |> vote", "`vote` expects a Pool, but `sample(4) |> vote` gives an Answer"),
        ("sample(4) + 1 |> vote", "cannot apply `+` to a stage (Question | Pool -> Pool) and an int"),
        ("sample(4) * sample(2) |> vote", "a stage is repeated a whole number of times, not a stage"),
        ("vote", "program `main` must start from the question"),
        ("majority", "`majority` is missing its argument `n` (int)"),
        ("policy", "`|>`" if False else "a program is a stage, but this is a model"),
        ("difficulty(prm)", "only valid as the head of a `match`"),
        ('llama("x") |> vote', "makes a model, not a stage"),
        ("match difficulty(prm) { 1..5 => sample(2) |> vote  _ => vote }", "`_` is unreachable"),
        ("match difficulty(prm) { 3..1 => vote  _ => vote }", "empty bin range 3..1"),
        ("match difficulty(prm) { 1..5 => sample(2)  }", "gives a Pool, not an Answer"),
        ("match difficulty(prm, bins=2 + 1) { _ => sample(2) |> vote }", "`bins` must be a literal integer"),
        ("match probe(prm) { _ => sample(2) |> vote }", "`match` takes `difficulty(...)`"),
        ("beam(16, prm, width=5) |> vote", "n (16) must be a multiple of width (5)"),
        ("sample(4, temperature=-1.0) |> vote", "`temperature` must be at least 0"),
        ("sample(4) |> best(oracle, 3)", "`best` takes 1 positional argument"),
    ],
)
def test_checker_messages(body, message, errors_of):
    text = errors_of(HEADER + f"program main = {body}\n")
    assert text is not None and message in text


def test_reserved_and_duplicate_names(errors_of):
    assert "`vote` is a built-in name" in errors_of("strategy vote(n: int) = sample(n) |> best(oracle)")
    text = errors_of(HEADER + "strategy majority(n: int) = sample(n) |> vote\nprogram main = majority(2)")
    assert "duplicate definition of `majority`" in text and "first defined at stdlib/parallel.ttcl" in text


def test_program_parameters_are_scalars(errors_of):
    assert "unknown program parameter type `verifier`" in errors_of(
        "program main(v: verifier = oracle) = sample(2) |> best(v)"
    )


def test_all_errors_are_reported_not_only_the_first(errors_of):
    text = errors_of("program a = sample(0) |> vote\nprogram b = vote |> vote\nprogram c = smaple(2) |> vote")
    assert "must be at least 1" not in text  # value checks wait for the type errors to be fixed
    assert text.count("error:") == 2
    text = errors_of("program a = sample(0) |> vote\nprogram b = sample(-1) |> vote")
    assert text.count("error:") == 2


# ---- passes ----------------------------------------------------------------------------


def body_of(text: str) -> ast.Expr:
    return next(s for s in parse(text).statements if isinstance(s, ast.ProgramDecl)).body


def test_passes_are_an_ordered_tuple_of_pure_functions():
    assert isinstance(PASSES, tuple) and PASSES[1] is inline_strategies
    module = parse("strategy s(n: int) = sample(n * 2) |> vote\nprogram main = s(3)")
    defs = {d.name: d for d in module.statements}
    before = module.statements[1].body
    snapshot = before.model_dump()
    out = inline_strategies(before, PassContext(defs))
    assert before.model_dump() == snapshot
    assert isinstance(out, ast.Inlined) and out.strategy == "s"


def test_fold_constants():
    out = fold_constants(body_of("program main = revise(4) * (16 / 4 - -1 % 3) |> vote"), PassContext({}))
    assert out.left.right.value == 2  # 16 / 4 - ((-1) % 3) = 4 - 2: floor semantics, like Python
    assert fold_constants(body_of("program m = sample(1) |> best(oracle)"), PassContext({})) is not None


def test_fuse_repeated_samples():
    out = fuse_repeated_samples(body_of("program main = sample(4, temperature=1.0) * 4 |> vote"), PassContext({}))
    assert out.left.func == "sample" and out.left.args[0].value == 16 and out.left.kwargs[0].name == "temperature"


def test_inlining_is_hygienic():
    prog = ttcl.compile("strategy s(n: int) = sample(n) |> vote\nprogram main(n: int = 3) = s(n + 1)")
    g = prog.graph
    assert [g.nodes[x]["params"].get("n") for x in g if g.nodes[x]["op"] == "sample"] == [4]


def test_expansion_limit():
    with pytest.raises(ttcl.TTCLError, match="expands to more than"):
        ttcl.compile("program main = (sample(1) |> vote) * 20000 |> vote")


# ---- list literals and difficulty thresholds ---------------------------------------------

FITTED = "match difficulty(prm, probe=4, thresholds=[0.31, 0.45, 0.58, 0.72]) {{ {arms} }}"


def difficulty_node(prog: ttcl.Program) -> dict:
    g = prog.graph
    return next(g.nodes[n] for n in g if g.nodes[n]["op"] == "difficulty")


def test_thresholds_set_the_bins():
    prog = compile_body(
        FITTED.format(arms="1..2 => sequential_revisions(16, prm)  3..5 => beam(16, prm, width=4) |> best(prm)")
    )
    params = difficulty_node(prog)["params"]
    assert params["thresholds"] == [0.31, 0.45, 0.58, 0.72] and params["bins"] == 5
    g = prog.graph
    merge = next(n for n in g if g.nodes[n]["op"] == "merge")
    assert g.nodes[merge]["params"] == {"bins": 5}
    assert sorted(g.edges[u, merge]["guard"] for u in g.predecessors(merge)) == [[1, 2], [3, 4, 5]]


def test_thresholds_without_bins_make_len_plus_one_bins():
    prog = compile_body("match difficulty(prm, thresholds=[0, 1]) { 1 => majority(2)  _ => majority(4) }")
    params = difficulty_node(prog)["params"]
    assert params["thresholds"] == [0.0, 1.0] and all(isinstance(t, float) for t in params["thresholds"])
    assert params["bins"] == 3  # ints are accepted as floats; two cut points, three bins
    g = prog.graph
    merge = next(n for n in g if g.nodes[n]["op"] == "merge")
    assert sorted(g.edges[u, merge]["guard"] for u in g.predecessors(merge)) == [[1], [2, 3]]


def test_thresholds_agreeing_with_bins():
    prog = compile_body("match difficulty(prm, bins=2, thresholds=[0.5,]) { 1 => majority(2)  2 => majority(4) }")
    assert difficulty_node(prog)["params"]["bins"] == 2


def test_thresholds_fold_and_bind():
    src = HEADER + (
        "program main(cut: float = 0.25) =\n"
        "  match difficulty(prm, thresholds=[cut, cut * 2, 1 - 0.1]) { 1 => majority(2)  _ => majority(4) }\n"
    )
    assert difficulty_node(ttcl.compile(src))["params"]["thresholds"] == [0.25, 0.5, 0.9]
    assert difficulty_node(ttcl.compile(src, params={"cut": 0.1}))["params"]["thresholds"] == [0.1, 0.2, 0.9]
    body = fold_constants(body_of("program m = f([1 + 2, -(0.5), 2 * 0.25])"), PassContext({}))
    assert [i.value for i in body.args[0].items] == [3, -0.5, 0.5]


def test_without_thresholds_the_params_have_none():
    prog = compile_body("match difficulty(prm) { 1..2 => majority(2)  _ => majority(4) }")
    assert "thresholds" not in difficulty_node(prog)["params"] and difficulty_node(prog)["params"]["bins"] == 5


@pytest.mark.parametrize(
    "body, message",
    [
        ("match difficulty(prm, thresholds=[0.5]) { 1..3 => majority(2) }", "bin range 1..3 is outside 1..2"),
        ("match difficulty(prm, thresholds=[0.5, 0.7]) { 1 => majority(2) }", "bins 2, 3 not covered"),
        ("match difficulty(prm, bins=4, thresholds=[0.5]) { _ => majority(2) }", "holds 1 number, but bins=4 needs 3"),
        ("match difficulty(prm, thresholds=[]) { _ => majority(2) }", "must hold 1 to 19 numbers"),
        ("match difficulty(prm, thresholds=[0.05] * 20) { _ => majority(2) }", "cannot apply `*`"),
        ("match difficulty(prm, thresholds=[-0.1, 0.5]) { _ => majority(2) }", "must be at least 0, got -0.1"),
        (
            "match difficulty(prm, thresholds=[0.5, 0.4]) { _ => majority(2) }",
            "strictly ascending, but 0.4 follows 0.5",
        ),
        ("match difficulty(prm, thresholds=[0.5, true]) { _ => majority(2) }", "a list holds numbers, not a bool"),
        (
            "match difficulty(prm, thresholds=[[0.5]]) { _ => majority(2) }",
            "a list holds numbers, not a list of numbers",
        ),
        ("match difficulty(prm, thresholds=prm) { _ => majority(2) }", "must be a list of numbers, not a verifier"),
        ("sample([4]) |> vote", "`sample` argument `n` must be an int, not a list of integers"),
        ("[0.5]", "a program is a stage, but this is a list of numbers"),
        ("sample(4) |> [1]", "`|>` joins stages, but `[1]` is a list of integers"),
    ],
)
def test_list_and_threshold_errors(body, message, errors_of):
    text = errors_of(HEADER + f"program main = {body}\n")
    assert text is not None and message in text, text


def test_twenty_one_bins_is_too_many(errors_of):
    cuts = ", ".join(f"0.{i:02d}" for i in range(1, 21))
    text = errors_of(HEADER + f"program main = match difficulty(prm, thresholds=[{cuts}]) {{ _ => majority(2) }}\n")
    assert "must hold 1 to 19 numbers (2 to 20 bins), not 20" in text
