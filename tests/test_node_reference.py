"""`NODE:/path`: what it means, what it is never confused with, how a malformed one is refused (at
the spec, so the API answers 4xx with the reason), and the API's qualification of a plain path."""

import pytest
from pydantic import ValidationError

from berth.api.cli.common import model_reference
from berth.api.facade.model_paths import is_plain_path, node_path_refusal, qualified_model, refuse_outside_roots
from berth.api.facade.errors import BadRequest
from berth.domain import cluster, model_reference as references
from berth.domain.model_reference import (
    BadModelReference,
    HubReference,
    LocalReference,
    NodeReference,
    UrlReference,
    is_node_reference,
    parse_model_reference,
)
from berth.domain.spec import DeploymentSpec
from berth.settings import API_NODE_ENV, Settings


@pytest.mark.parametrize("text, expected", [
    ("gpu-box:/srv/models/q.gguf", NodeReference("gpu-box", "/srv/models/q.gguf")),
    ("n1:/srv/models/qwen/", NodeReference("n1", "/srv/models/qwen")),  # a folder, its trailing '/' dropped
    ("n_2:/srv//models/./q.gguf", NodeReference("n_2", "/srv/models/q.gguf")),
    ("a:/x y.gguf", NodeReference("a", "/x y.gguf")),
    ("hf:org/repo", HubReference(repo="org/repo")),  # no slash after the colon: the hub
    ("hf:org/repo@v1:q.gguf", HubReference(repo="org/repo", revision="v1", file="q.gguf")),
    ("https://host/q.gguf", UrlReference(url="https://host/q.gguf", file_name="q.gguf")),
    ("http://node-a:8080/q.gguf", UrlReference(url="http://node-a:8080/q.gguf", file_name="q.gguf")),
    ("/srv/models/a:b.gguf", LocalReference("/srv/models/a:b.gguf")),  # a colon inside a path
    ("/srv/models/q.gguf", LocalReference("/srv/models/q.gguf")),
    ("models/q.gguf", LocalReference("models/q.gguf")),
])
def test_what_a_reference_names(text, expected):
    assert parse_model_reference(text) == expected


@pytest.mark.parametrize("text, words", [
    ("Node-A:/srv/q.gguf", "not a node id"),  # node ids are lowercase
    ("-a:/srv/q.gguf", "not a node id"),
    ("a" * 64 + ":/srv/q.gguf", "not a node id"),
    ("n1:/srv/../etc/passwd", "'..'"),
    ("n1:/..", "'..'"),
    ("n1:/", "not '/'"),
    ("n1:/srv/q\x00.gguf", "control character"),
    ("n1:/srv/q\n.gguf", "control character"),
    ("hf:/srv/q.gguf", "hf:org/repo"),  # neither a node called hf nor a hub repo
    ("http:/host/q.gguf", "http://host/path"),
    ("https:/host/q.gguf", "https://host/path"),
    ("s3://bucket/q.gguf", "looks like a URL"),
    ("node-a://srv/q.gguf", "looks like a URL"),
])
def test_a_malformed_node_path_is_refused_saying_why(text, words):
    with pytest.raises(BadModelReference) as refused:
        parse_model_reference(text)
    assert words in str(refused.value)
    with pytest.raises(ValidationError) as invalid:  # the spec refuses it: the API's 400/422 with the reason
        DeploymentSpec(name="x", model=text)
    assert words in str(invalid.value)


def test_placement_reads_the_same_node_from_a_reference():
    """berth.domain.placement (the cluster's choice, preferring the node that holds the files) reads
    the node of every reference the spec accepts as this module does."""
    from berth.domain.placement import files_node

    for text in ("gpu-box:/srv/models/q.gguf", "n1:/srv/models/qwen/", "/srv/q.gguf", "hf:org/repo", "https://h/q.gguf"):
        parsed = parse_model_reference(text)
        assert files_node(text) == (parsed.node if isinstance(parsed, NodeReference) else None), text


def test_the_node_id_rule_is_the_clusters():
    assert references.NODE_ID_PATTERN.pattern == cluster.NODE_ID_PATTERN.pattern
    assert not is_node_reference("https://h:1/x") and is_node_reference("n:/x") and not is_node_reference("/n:/x")


def test_the_cli_sends_a_node_path_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_reference("node-a:/srv/models/q.gguf") == "node-a:/srv/models/q.gguf"


@pytest.mark.parametrize("model, api_node, nodes, expected", [
    ("/srv/models/q.gguf", "node-a", 2, "node-a:/srv/models/q.gguf"),
    ("/srv/models/qwen/", "node-a", 3, "node-a:/srv/models/qwen"),
    ("/srv/models/q.gguf", "node-a", 1, "/srv/models/q.gguf"),  # one node: plain
    ("/srv/models/q.gguf", None, 2, "/srv/models/q.gguf"),  # the API's node unknown: plain
    ("/srv/models/q.gguf", "Not A Node", 2, "/srv/models/q.gguf"),
    ("node-b:/srv/q.gguf", "node-a", 2, "node-b:/srv/q.gguf"),  # already qualified
    ("https://h/q.gguf", "node-a", 2, "https://h/q.gguf"),
    ("hf:org/repo", "node-a", 2, "hf:org/repo"),
    ("org/repo", "node-a", 2, "org/repo"),
    ("gemma3-270m", "node-a", 2, "gemma3-270m"),
    ("models/q.gguf", "node-a", 2, "models/q.gguf"),  # relative: the CLI makes paths absolute
])
def test_a_plain_path_is_qualified_with_the_apis_node_in_a_cluster(model, api_node, nodes, expected):
    assert qualified_model(model, api_node, nodes) == expected
    assert is_plain_path(model) == (model.startswith("/"))


def test_the_api_checks_its_own_nodes_node_paths_against_its_roots(tmp_path):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_MODEL_ROOTS": str(tmp_path)})
    beside = {API_NODE_ENV: "node-a"}
    with pytest.raises(BadRequest, match="outside the folders this node reads models from"):
        refuse_outside_roots(DeploymentSpec(name="x", model="node-a:/etc/passwd"), settings, beside)
    refuse_outside_roots(DeploymentSpec(name="x", model=f"node-a:{tmp_path}/q.gguf"), settings, beside)
    refuse_outside_roots(DeploymentSpec(name="x", model="node-b:/etc/passwd"), settings, beside)  # node-b's to say
    assert node_path_refusal("node-b:/etc/passwd", "node-a", [tmp_path]) is None
