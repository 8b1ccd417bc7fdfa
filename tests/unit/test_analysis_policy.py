"""Analysis as policy: checks, built-in templates per platform, placeholders, and no data never passing."""

from __future__ import annotations

from pathlib import Path

import promql_parser
import pytest
from pydantic import ValidationError

from mlcd.policy import analysis
from mlcd.policy.check import check_text
from mlcd.policy.schema import Check, Policy, Rollout, Thresholds

TARGET = analysis.Target("models", "wine", "wine-predictor-00002", "wine", "2", 30.0)


@pytest.mark.parametrize("platform", ["serverless", "raw", "local"])
def test_every_built_in_template_renders_to_promql_that_parses(platform: analysis.Platform) -> None:
    for check in Rollout().checks():
        query = analysis.promql(check, platform, TARGET)
        promql_parser.parse(query)
        assert analysis.placeholders_in(query) == []


def test_serverless_templates_read_knative_queue_proxy_metrics_and_turn_milliseconds_into_seconds() -> None:
    checks = {c.template: c for c in Rollout().checks()}
    count = analysis.promql(checks["request-count"], "serverless", TARGET)
    p95 = analysis.promql(checks["request-duration-p95"], "serverless", TARGET)
    assert 'revision_app_request_count{namespace_name="models",revision_name="wine-predictor-00002"}' in count
    assert "revision_app_request_latencies_bucket" in p95 and p95.endswith("/ 1000")
    success = analysis.promql(checks["request-success-rate"], "serverless", TARGET)
    assert 'response_code_class!="5xx"' in success


def test_standard_mode_templates_read_mlserver_metrics() -> None:
    checks = {c.template: c for c in Rollout().checks()}
    assert "rest_server_requests_total" in analysis.promql(checks["request-count"], "raw", TARGET)
    assert "rest_server_request_duration_seconds_bucket" in analysis.promql(
        checks["request-duration-p95"], "raw", TARGET
    )


def test_a_query_gets_every_placeholder_and_keeps_its_label_matchers() -> None:
    check = Check(
        name="custom",
        query='sum(rate(x{ns="{namespace}",svc="{service}",rev="{revision}",m="{model}",v="{version}"}[{window}]))',
        max=1,
        window="2m",
    )
    rendered = analysis.promql(check, "serverless", TARGET)
    assert rendered == (
        'sum(rate(x{ns="models",svc="wine",rev="wine-predictor-00002",m="wine",v="2"}[120s]))'
    )


def test_label_values_are_quoted_for_promql() -> None:
    check = Check(name="q", query='x{m="{model}"}', max=1)
    target = analysis.Target("n", "s", "r", 'we"ird\\', "1", 1)
    assert analysis.promql(check, "local", target) == 'x{m="we\\"ird\\\\"}'


def test_no_data_is_inconclusive_never_a_pass() -> None:
    check = Check(name="success", template="request-success-rate", min=0.95)
    assert analysis.judge(check, None).passed is None
    assert analysis.judge(check, float("nan")).passed is None
    assert analysis.judge(check, 0.99).passed is True
    assert analysis.judge(check, 0.5).passed is False


def test_too_few_requests_is_inconclusive_not_a_failure() -> None:
    check = Check(name="count", template="request-count", min=20)
    outcome = analysis.judge(check, 3)
    assert outcome.passed is None and "only 3 requests" in outcome.reason


def test_the_default_needs_requests_before_anything_passes() -> None:
    assert Thresholds().min_requests > 0
    with pytest.raises(ValidationError):
        Thresholds(min_requests=0)
    count = next(c for c in Rollout().checks() if c.template == "request-count")
    assert analysis.judge(count, 0).passed is None


def test_a_check_names_exactly_one_source_and_at_least_one_bound() -> None:
    with pytest.raises(ValidationError, match="exactly one of template or query"):
        Check(name="x", min=1)
    with pytest.raises(ValidationError, match="min, max or both"):
        Check(name="x", template="request-count")
    with pytest.raises(ValidationError, match="unique"):
        Rollout(analysis=[Check(name="a", query="up", min=1), Check(name="a", query="up", min=1)])


def test_policy_check_reports_bad_placeholders_and_bad_promql_with_their_lines() -> None:
    text = """model: wine
rollout:
  analysis:
    - name: typo
      query: sum(rate(x{ns="{namesapce}"}[{window}]))
      max: 0.1
    - name: unclosed
      query: sum(rate(x[{window}])
      max: 0.1
    - name: fine
      query: sum(rate(revision_app_request_count{revision_name="{revision}"}[{window}]))
      min: 1
  on_inconclusive: rollback
  progress_deadline: 5m
"""
    problems = check_text(text, Path("wine.yaml"))
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (5, "rollout.analysis.0.query"),
        (8, "rollout.analysis.1.query"),
    ]
    assert "unknown placeholder(s) namesapce" in problems[0].message
    assert "not PromQL" in problems[1].message
    policy = Policy.model_validate({"model": "wine", "rollout": {"on_inconclusive": "rollback"}})
    assert policy.rollout.on_inconclusive == "rollback"


def test_a_step_passes_only_when_every_check_passes_and_any_failure_wins_over_no_data() -> None:
    from mlcd.deployer import steps

    passed = analysis.Outcome("a", 1.0, True)
    no_data = analysis.Outcome("b", None, None, "b: no data")
    failed = analysis.Outcome("c", 0.2, False, "c 0.2 below 0.95")
    assert steps.verdict([passed]).conclusive and not steps.verdict([passed]).failed
    assert not steps.verdict([passed, no_data]).conclusive
    assert steps.verdict([passed, no_data]).reason == "b: no data"
    mixed = steps.verdict([no_data, failed])
    assert mixed.failed == [failed] and mixed.reason == "c 0.2 below 0.95"
    assert mixed.figures == {"c": 0.2}
    assert not steps.verdict([]).conclusive  # no checks is no evidence
