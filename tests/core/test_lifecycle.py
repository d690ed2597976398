"""The bundle's lifecycle declaration (`lifecycle.yaml`, sidecar/core/lifecycle.py).

Good declarations load into the model the evidence reads; every bad one is
refused by the loader at its file, line and column, and `check_directory`
(what `stepguard validate` prints) lists every problem, each at its position.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import lifecycle
from sidecar.core.bundle import load_bundle
from sidecar.core.errors import BundleError
from sidecar.core.lifecycle import Kind, Lifecycle, Pair
from sidecar.core.model import EntityUid
from sidecar.core.problems import check_directory
from tests.helpers import POLICIES


def act(name: str) -> EntityUid:
    return EntityUid("Action", name)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def test_the_example_bundle_declares_its_lifecycle() -> None:
    declared = load_bundle(POLICIES).lifecycle
    assert declared is not None
    assert dict(declared.creates) == {
        act("create_account"): Kind.ACCOUNT,
        act("grant_access"): Kind.ENTITLEMENT,
        act("change_access"): Kind.ENTITLEMENT,
        act("issue_credential"): Kind.CREDENTIAL,
    }
    assert dict(declared.removes) == {
        act("delete_account"): Kind.ACCOUNT,
        act("revoke_access"): Kind.ENTITLEMENT,
        act("disable_credential"): Kind.CREDENTIAL,
    }
    assert set(declared.pairs) == {
        Pair(act("create_account"), act("delete_account"), Kind.ACCOUNT),
        Pair(act("grant_access"), act("revoke_access"), Kind.ENTITLEMENT),
        Pair(act("change_access"), act("revoke_access"), Kind.ENTITLEMENT),
        Pair(act("issue_credential"), act("disable_credential"), Kind.CREDENTIAL),
    }
    assert declared.closed_by(act("grant_access")) == {act("revoke_access")}
    assert declared.closes(act("revoke_access")) == {act("grant_access"), act("change_access")}
    assert declared.kind_of(act("notify")) is None  # neither creates nor removes
    assert declared.leaver_workflows == {"leaver", "legacy-offboarding"}
    # what identifies one access of each kind, and what else closes it
    grant = next(p for p in declared.pairs if p.creator == act("grant_access"))
    assert grant.key == ("identity", "target", "entitlement")
    assert Kind.ACCOUNT.key == ("identity", "target")
    assert Kind.CREDENTIAL.key == ("identity", "target", "credential_id")
    assert Kind.CREDENTIAL.expires and not Kind.ENTITLEMENT.expires
    assert set(lifecycle.EFFECT_FIELDS) >= {f for k in Kind for f in k.key}


def test_the_declaration_is_optional(copy: Path) -> None:
    (copy / "lifecycle.yaml").unlink()
    bundle, problems = check_directory(copy)
    assert problems == [] and bundle is not None and bundle.lifecycle is None


ACTIONS = frozenset(
    act(n)
    for n in (
        "grant_access",
        "revoke_access",
        "issue_credential",
        "disable_credential",
        "create_account",
        "delete_account",
        "deprovision",
    )
)
GROUPS = frozenset({act("deprovision")})


def test_forms_a_declaration_may_take() -> None:
    text = (
        "creates:\n"
        '  Action::"grant_access": entitlement\n'  # the full form
        "  issue_credential: credential\n"  # unpaired: it still expires
        "removes:\n"
        "  revoke_access: entitlement\n"
        "pairs:\n"
        "  - {create: [grant_access], closed_by: [revoke_access, revoke_access]}\n"
        "leaver_workflows:\n"
    )
    assert lifecycle.parse(text, ACTIONS, GROUPS) == Lifecycle(
        creates={act("grant_access"): Kind.ENTITLEMENT, act("issue_credential"): Kind.CREDENTIAL},
        removes={act("revoke_access"): Kind.ENTITLEMENT},
        pairs=(Pair(act("grant_access"), act("revoke_access"), Kind.ENTITLEMENT),),
    )
    assert lifecycle.parse("", ACTIONS) == Lifecycle()  # an empty file declares nothing
    assert lifecycle.parse("# nothing yet\n", ACTIONS) == Lifecycle()


# (lifecycle.yaml, [(line, column, a part of the message), ...]): every problem, in order.
BAD = {
    "unknown top-level key": (
        "creates: {}\nremoves: {}\npair: []\n",
        [(3, 1, "unknown key 'pair' (allowed: creates, removes, pairs, leaver_workflows)")],
    ),
    "not an action of the schema": (
        "creates:\n  grant_acess: entitlement\n",
        [(2, 3, "creates: 'grant_acess' is not an action of the schema")],
    ),
    "an action group is not a step": (
        "removes:\n  deprovision: account\n",
        [(2, 3, 'Action::"deprovision" is an action group')],
    ),
    "unknown kind": (
        "creates:\n  issue_credential: token\n",
        [(2, 21, "unknown kind 'token' (one of account, entitlement, credential)")],
    ),
    "both a creator and a remover": (
        "creates:\n  grant_access: entitlement\nremoves:\n  grant_access: entitlement\n"
        "pairs:\n  - {create: grant_access, closed_by: grant_access}\n",
        [
            (4, 3, 'Action::"grant_access" is also under creates (line 2)'),
            (6, 39, 'pairs[0].closed_by: Action::"grant_access" creates access'),
        ],
    ),
    "a pair joins actions of one kind": (
        "creates:\n  grant_access: entitlement\nremoves:\n  revoke_access: entitlement\n"
        "  disable_credential: credential\npairs:\n"
        "  - create: grant_access\n    closed_by: [revoke_access, disable_credential]\n",
        [
            (
                8,
                32,
                'Action::"grant_access" creates an entitlement but '
                'Action::"disable_credential" removes a credential',
            ),
        ],
    ),
    "a pair names declared actions on the right side": (
        "creates:\n  grant_access: entitlement\nremoves:\n  revoke_access: entitlement\n"
        "pairs:\n  - create: revoke_access\n    closed_by: delete_account\n",
        [
            (6, 13, 'pairs[0].create: Action::"revoke_access" removes access'),
            (7, 16, 'pairs[0].closed_by: Action::"delete_account" is not declared under removes'),
        ],
    ),
    "every creation is closed and every removal closes something": (
        "creates:\n  grant_access: entitlement\n  issue_credential: credential\n"
        "removes:\n  revoke_access: entitlement\npairs: []\n",
        [
            (2, 3, 'creates.grant_access: no pair closes the entitlement Action::"grant_access"'),
            (5, 3, 'removes.revoke_access: Action::"revoke_access" closes nothing'),
        ],
    ),
    "a pair needs both sides, and no other key": (
        "creates:\n  create_account: account\nremoves:\n  delete_account: account\n"
        "pairs:\n  - create: create_account\n  - create: create_account\n"
        "    closed_by: delete_account\n    expires: true\n",
        [
            (6, 5, "pairs[0]: closed_by is required"),
            (9, 5, "pairs[1]: unknown key 'expires' (allowed: create, closed_by)"),
        ],
    ),
    "names are text": (
        "creates:\n  grant_access: 3\nleaver_workflows: [leaver, 7]\n",
        [
            (2, 17, "creates.grant_access: expected a name, got '3'"),
            (3, 28, "leaver_workflows: expected a name, got '7'"),
        ],
    ),
    "each key once": (
        "creates:\n  issue_credential: credential\n  issue_credential: credential\ncreates: {}\n",
        [
            (3, 3, 'creates: Action::"issue_credential" is given twice'),
            (4, 1, "top level: creates is given twice"),
        ],
    ),
    "the wrong shapes": (
        "creates: [grant_access]\nremoves: revoke_access\npairs: {create: x}\n"
        "leaver_workflows: leaver\n",
        [
            (1, 10, "creates: expected a mapping of actions to kinds"),
            (2, 10, "removes: expected a mapping of actions to kinds"),
            (3, 8, "pairs: expected a list"),
            (4, 19, "leaver_workflows: expected a list of workflow ids"),
        ],
    ),
    "not a mapping at all": ("- grant_access\n", [(1, 1, "top level: expected a mapping")]),
    "aliases are refused": (
        "creates: &c {grant_access: entitlement}\nremoves: *c\n",
        [(1, 10, "invalid YAML: anchors (&c) are not allowed")],
    ),
    "not YAML": ("creates: {grant_access: [\n", [(2, 1, "invalid YAML:")]),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=str)
def test_each_refusal_names_its_line_and_column(case: str) -> None:
    text, expected = BAD[case]
    declared, findings = lifecycle.check(text, ACTIONS, GROUPS)
    assert declared is None
    got = [(f.line, f.column) for f in findings]
    assert got == [(line, column) for line, column, _ in expected], [
        (f.line, f.column, f.message) for f in findings
    ]
    for finding, (_, _, part) in zip(findings, expected, strict=True):
        assert part in finding.message
    # the loader refuses the first, at the same place, and says how many more there are
    with pytest.raises(BundleError) as raised:
        lifecycle.parse(text, ACTIONS, GROUPS, file="team/lifecycle.yaml")
    first = findings[0]
    assert (raised.value.file, raised.value.line, raised.value.column) == (
        "team/lifecycle.yaml",
        first.line,
        first.column,
    )
    assert str(raised.value).startswith(f"team/lifecycle.yaml:{first.line}:{first.column}: ")
    if len(findings) > 1:
        assert f"({len(findings) - 1} more problem(s) in this file)" in str(raised.value)


def test_the_loader_and_validate_refuse_a_bad_declaration_at_every_position(copy: Path) -> None:
    (copy / "lifecycle.yaml").write_text(
        "creates:\n"
        "  grant_access: entitlement\n"
        "  verify_revocation: account\n"  # 3:3, nothing closes it
        "removes:\n"
        "  revoke_access: entitlement\n"
        "  revoke_acess: entitlement\n"  # 6:3, a typo
        "pairs:\n"
        "  - create: grant_access\n"
        "    closed_by: revoke_access\n"
        "leaver_workflows: [leaver, {x: 1}]\n"  # 10:28, not a name
    )
    with pytest.raises(BundleError) as raised:
        load_bundle(copy)
    assert (raised.value.file, raised.value.line, raised.value.column) == ("lifecycle.yaml", 3, 3)
    assert "(2 more problem(s) in this file)" in str(raised.value)
    bundle, problems = check_directory(copy)
    assert bundle is None
    assert [(p.file, p.line, p.column) for p in problems] == [
        ("lifecycle.yaml", 3, 3),
        ("lifecycle.yaml", 6, 3),
        ("lifecycle.yaml", 10, 28),
    ]
    assert problems[1].source_line == "  revoke_acess: entitlement"
    assert "'revoke_acess' is not an action of the schema" in problems[1].message
    assert "expected a name, got a mapping" in problems[2].message


def test_at_most_one_declaration(copy: Path) -> None:
    (copy / "team").mkdir()
    shutil.copy(copy / "lifecycle.yaml", copy / "team" / "lifecycle.yaml")
    with pytest.raises(BundleError, match=r"expected at most one lifecycle\.yaml, found"):
        load_bundle(copy)


def test_a_lifecycle_that_is_not_a_regular_file_is_refused(copy: Path) -> None:
    (copy / "lifecycle.yaml").unlink()
    (copy / "lifecycle.yaml").symlink_to(copy / "missing.yaml")
    with pytest.raises(BundleError, match="dangling"):
        load_bundle(copy)


# --- @revoke_within: a permit's obligation


def test_revoke_within_is_read_from_the_permit() -> None:
    bundle = load_bundle(POLICIES)
    info = bundle.policies["provisioning-workloads-change-identities"]
    assert info.revoke_within == timedelta(hours=24)
    assert info.max_credential_ttl is None
    assert bundle.policies["deprovisioning-workloads-remove-access"].revoke_within is None


@pytest.mark.parametrize(
    ("annotation", "column", "message"),
    [
        ('@revoke_within("24 hours")', 16, "@revoke_within('24 hours'): expected an ISO-8601"),
        ('@revoke_within("P")', 16, "@revoke_within('P')"),
        ('@max_credential_ttl("soon")', 21, "@max_credential_ttl('soon')"),
    ],
)
def test_an_invalid_duration_is_refused_at_its_value(
    copy: Path, annotation: str, column: int, message: str
) -> None:
    (copy / "extra.cedar").write_text(
        f'// a comment\n@id("extra")\n{annotation}\npermit (principal, action, resource);\n'
    )
    with pytest.raises(BundleError) as raised:
        load_bundle(copy)
    assert (raised.value.file, raised.value.line, raised.value.column) == ("extra.cedar", 3, column)
    assert message in raised.value.detail
    bundle, problems = check_directory(copy)
    assert bundle is None
    assert [(p.file, p.line, p.column) for p in problems] == [("extra.cedar", 3, column)]


def test_revoke_within_on_a_forbid_is_refused(copy: Path) -> None:
    (copy / "extra.cedar").write_text(
        '@id("extra") @revoke_within("PT1H")\nforbid (principal, action, resource);\n'
    )
    with pytest.raises(BundleError, match="@revoke_within on a forbid") as raised:
        load_bundle(copy)
    assert (raised.value.line, raised.value.column) == (1, 29)


# --- any document: a declaration that holds together, or problems; never an exception

_NAMES = st.sampled_from(
    [
        "grant_access",
        "revoke_access",
        "issue_credential",
        "disable_credential",
        "create_account",
        "delete_account",
        "deprovision",
        "nope",
        'Action::"grant_access"',
    ]
)
_KINDS = st.sampled_from(["account", "entitlement", "credential", "token"])
_SIDE = st.one_of(_NAMES, st.lists(_NAMES, max_size=3))
_SCALAR = st.one_of(st.none(), st.integers(), st.booleans(), st.text(max_size=5))
_DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "creates": st.dictionaries(_NAMES, _KINDS, max_size=5),
        "removes": st.one_of(st.dictionaries(_NAMES, _KINDS, max_size=5), _SCALAR),
        "pairs": st.lists(
            st.fixed_dictionaries({}, optional={"create": _SIDE, "closed_by": _SIDE, "x": _SCALAR}),
            max_size=4,
        ),
        "leaver_workflows": st.one_of(st.lists(st.one_of(st.text(max_size=4), _SCALAR)), _SCALAR),
        "other": _SCALAR,
    },
)


@settings(max_examples=400, deadline=None)
@given(_DOCUMENT)
def test_any_document_is_a_coherent_declaration_or_located_problems(
    document: dict[str, object],
) -> None:
    text = yaml.safe_dump(document, sort_keys=False)
    declared, findings = lifecycle.check(text, ACTIONS, GROUPS)
    lines = text.count("\n") + 1
    if declared is None:
        assert findings
        for f in findings:
            assert 1 <= f.line <= lines and f.column >= 1 and f.message
        with pytest.raises(BundleError):
            lifecycle.parse(text, ACTIONS, GROUPS)
        return
    assert findings == []
    # what the evidence relies on
    assert not set(declared.creates) & set(declared.removes)
    assert set(declared.creates) | set(declared.removes) <= ACTIONS - GROUPS
    for pair in declared.pairs:
        assert declared.creates[pair.creator] is pair.kind is declared.removes[pair.remover]
    for creator, kind in declared.creates.items():
        assert kind.expires or declared.closed_by(creator)
    for remover in declared.removes:
        assert declared.closes(remover)


_STEPS = sorted(a.id for a in ACTIONS - GROUPS)


@st.composite
def _coherent(draw: st.DrawFn) -> tuple[str, Lifecycle]:
    """A declaration that holds together, written in any of the accepted forms."""
    roles = {name: draw(st.sampled_from([None, "creates", "removes"])) for name in _STEPS}
    kinds = {name: draw(st.sampled_from(list(Kind))) for name in _STEPS}
    creates = {n: kinds[n] for n in _STEPS if roles[n] == "creates"}
    removes = {n: kinds[n] for n in _STEPS if roles[n] == "removes"}
    removes = {n: k for n, k in removes.items() if k in creates.values()}
    creates = {n: k for n, k in creates.items() if k.expires or k in removes.values()}
    pairs = [(c, r) for c in creates for r in removes if creates[c] is removes[r]]
    pairs = draw(st.permutations(pairs))

    def key(n: str) -> str:
        return n if draw(st.booleans()) else f'Action::"{n}"'

    def side(n: str) -> str | list[str]:
        form = draw(st.sampled_from(["bare", "full", "list"]))
        return [n] if form == "list" else n if form == "bare" else f'Action::"{n}"'

    workflows = draw(st.lists(st.sampled_from(["leaver", "offboarding"]), unique=True))
    document = {
        "creates": {key(n): k.value for n, k in creates.items()},
        "removes": {key(n): k.value for n, k in removes.items()},
        "pairs": [{"create": side(c), "closed_by": side(r)} for c, r in pairs],
        "leaver_workflows": workflows,
    }
    expected = Lifecycle(
        creates={act(n): k for n, k in creates.items()},
        removes={act(n): k for n, k in removes.items()},
        pairs=tuple(Pair(act(c), act(r), creates[c]) for c, r in pairs),
        leaver_workflows=frozenset(workflows),
    )
    return yaml.safe_dump(document, sort_keys=False), expected


@settings(max_examples=300, deadline=None)
@given(_coherent())
def test_a_coherent_declaration_is_read_as_written(case: tuple[str, Lifecycle]) -> None:
    text, expected = case
    assert lifecycle.parse(text, ACTIONS, GROUPS) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=12).filter(lambda i: act(i) not in GROUPS))
def test_an_action_written_as_cedar_writes_it_is_the_schemas_action(ident: str) -> None:
    """A declaration's `Action::"id"` takes the id as `str(EntityUid)` writes it (quotes,
    backslashes and control characters escaped), so any action of the schema can be
    declared, and only that one."""
    action = act(ident)
    document = yaml.safe_dump({"creates": {str(action): "credential"}})
    assert lifecycle.parse(document, ACTIONS | {action}, GROUPS) == Lifecycle(
        creates={action: Kind.CREDENTIAL}
    )
