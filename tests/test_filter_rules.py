"""attention_influence.filter_rules: rule sets from names and groups, thresholds, per-domain sets, and the
errors a wrong setting gives; the filter job's options from a --config file (no Spark)."""

from __future__ import annotations

import pytest

from attention_influence import filter_rules as fr
from attention_influence.gopher import QUALITY_RULES, REPETITION_RULES
from spark_jobs import filter as filter_job
from spark_jobs.cli import JobError
from tests.test_quality_rules import CLEAN, CRAFTED


def test_groups_expand_and_rules_run_in_one_order_whatever_the_listing():
    listed = fr.rule_set(fr.parse_rules("fineweb_quality, gopher_min_words near_duplicate,exact_duplicate"))
    assert listed.rules == ("exact_duplicate", "near_duplicate", "gopher_min_words", *fr.fineweb.FINEWEB_RULES)
    assert listed.dedups and listed.near_dedups
    everything = fr.rule_set(fr.parse_rules(",".join(fr.GROUPS)))
    assert everything.rules == tuple(fr.rule_names()[3:])
    assert fr.rule_set(fr.parse_rules("none")).rules == () and fr.parse_rules("") == []


def test_first_rule_and_thresholds():
    rules = fr.rule_set(fr.parse_rules("gopher_repetition,gopher_quality"))
    assert rules.first_rule(CRAFTED["gopher_min_words"]) == "gopher_min_words"
    assert rules.first_rule(None) == rules.first_rule(" \n") == "empty"
    lenient = fr.rule_set(fr.parse_rules("gopher_repetition,gopher_quality"), {"gopher_min_words": 5})
    assert lenient.first_rule(CRAFTED["gopher_min_words"]) is None
    assert dict(lenient.checks)["gopher_quality"]["gopher_min_words"] == 5
    assert dict(rules.checks)["gopher_repetition"] == REPETITION_RULES  # the published ones by default
    assert fr.rule_set(["c4"]).first_rule(CLEAN) is None


def test_domains_get_their_own_sets_thresholds_and_skips():
    config = fr.filter_config("gopher_quality", "code=code; legal=gopher_repetition", "web, news",
                              "gopher_min_words=10 legal:gopher_dup_line_frac=0.5 blog:gopher_min_words=3")
    assert config.rules_for("prose").rules == tuple(QUALITY_RULES) == config.rules_for(None).rules
    assert dict(config.rules_for("prose").checks)["gopher_quality"]["gopher_min_words"] == 10
    assert config.rules_for("code").rules == tuple(fr.code_rules.CODE_RULES)
    assert dict(config.rules_for("legal").checks)["gopher_repetition"]["gopher_dup_line_frac"] == 0.5
    assert config.rules_for("web").rules == config.rules_for("news").rules == ()
    assert dict(config.rules_for("blog").checks)["gopher_quality"]["gopher_min_words"] == 3  # default rules


@pytest.mark.parametrize("settings, message", [
    (("gopher_min_word",), "unknown rule 'gopher_min_word' (did you mean gopher_min_words?)"),
    (("none", "code"), "domain rules 'code' are not domain=rules"),
    (("none", "code=code; code=none"), "domain code is given rules twice"),
    (("none", None, "a=b"), "domain 'a=b' may not hold"),
    (("none", "web=code", "web"), "domain(s) web both skipped and given rules"),
    (("none", None, "web", "web:code_max_line_length=5"), "domain web is skipped"),
    (("none", None, None, "gopher_min_words"), "threshold 'gopher_min_words' is not [domain:]name=value"),
    (("none", None, None, "c4_lorem_ipsum=1"), "unknown threshold 'c4_lorem_ipsum'"),
    (("none", None, None, "gopher_min_words=many"), "threshold gopher_min_words must be a number >= 0"),
    (("none", None, None, "gopher_min_words=nan"), "threshold gopher_min_words must be a number >= 0"),
])
def test_wrong_settings_are_one_line_errors(settings, message):
    with pytest.raises(ValueError) as error:
        fr.filter_config(*settings)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_job_reads_rules_from_a_config_file_and_flags_override_it(tmp_path):
    config = tmp_path / "filter.yaml"
    config.write_text('rules: exact_duplicate, gopher_repetition\ndomain_rules: "code=none"\n'
                      'thresholds: "gopher_top_2_gram=0.3"\n')
    options = filter_job.parse_options(["--config", str(config)])
    rules = filter_job.rule_config(options)
    assert rules.rules_for("prose").rules == ("exact_duplicate", *REPETITION_RULES)
    assert rules.rules_for("code").rules == ()
    assert dict(rules.rules_for("prose").checks)["gopher_repetition"]["gopher_top_2_gram"] == 0.3
    options = filter_job.parse_options(["--config", str(config), "--rules", "code"])
    assert filter_job.rule_config(options).rules_for("prose").rules == tuple(fr.code_rules.CODE_RULES)
    config.write_text("rules: gopher_repitition\n")
    with pytest.raises(JobError, match=r"^--rules: unknown rule 'gopher_repitition' \(did you mean gopher_repetition\?\)"):
        filter_job.parse_options(["--config", str(config)])


def test_the_default_configuration_is_finewebs_and_a_code_pipelines():
    rules = filter_job.rule_config(filter_job.options())
    assert rules.rules_for("prose").rules == tuple(r for r in fr.rule_names()[1:] if not r.startswith("code_"))
    assert rules.rules_for("code").rules == ("exact_duplicate", "near_duplicate", *fr.code_rules.CODE_RULES)
    assert filter_job.user_named_domains(filter_job.options()) == set()
    assert filter_job.user_named_domains(filter_job.options(skip_domains="legal")) == {"legal"}
