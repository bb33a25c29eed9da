import pytest

from stripe_sf_sync import config, salesforce_ids
from stripe_sf_sync.errors import ConfigError, ExitCode

GOOD_RT = "0125g000000AbCdAAK"


def test_the_packaged_example_config_is_valid_and_the_only_copy(tmp_path):
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    # One example: the one the package ships; the repository's top level links to it, so it cannot drift.
    top = root / "sync.yaml.example"
    assert top.is_symlink() and top.resolve() == (root / "stripe_sf_sync" / "sync.yaml.example").resolve()
    example = config.example_config()
    assert example == (root / "stripe_sf_sync" / "sync.yaml.example").read_text()
    path = tmp_path / "sync.yaml"
    path.write_text(example)
    loaded = config.load_config(path)
    assert loaded.settings.salesforce.fields.subscription_id == "Stripe_Subscription_ID__c"
    assert loaded.state_path == tmp_path / "stripe-sf-state.sqlite"
    with pytest.raises(ConfigError) as info:
        config.require_org_values(loaded.settings, str(path))
    assert "discover-config --write" in str(info.value)


def test_every_problem_is_listed_with_its_key_path(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text("stripe:\n  requests_per_second: -1\n  colour: blue\nsalesforce:\n  api_budget: 2\n"
                    "  fields:\n    mrr: 'MRR__c; DROP'\nsync:\n  batch_size: zero\n")
    with pytest.raises(ConfigError) as info:
        config.load_config(path)
    msg = str(info.value)
    for key in ("stripe.requests_per_second", "stripe.colour: unknown key", "salesforce.api_budget",
                "salesforce.fields.mrr", "sync.batch_size"):
        assert key in msg
    assert info.value.exit_code == ExitCode.CONFIG
    assert len(info.value.problems) == 5


@pytest.mark.parametrize("text", ["[1, 2", "- a\n- b\n", "just a string", "a: [\n"])
def test_bad_yaml_is_a_clear_error(tmp_path, text):
    path = tmp_path / "sync.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load_config(path)
    assert "sync.yaml" in str(info.value)


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param(b"stripe:\n  api_version: 2026-10-28.endive\n\tbatch_size: 5\n",
                 ["not valid YAML at line 3, column 1", "'\\t'"], id="where, and what the parser found there"),
    pytest.param(b"sync:\n  batch_size: 100\n  batch_size: 5000\n", ["at line 3, column 3", "duplicate key"],
                 id="a duplicate key is refused, not silently overwritten"),
    pytest.param(b"sync:\n  state_path: a\x07b\n", ["at line 2, column 16: character #x0007 is not allowed"],
                 id="a control character"),
    pytest.param(b"sync: !!python/object/apply:os.system ['true']\n", ["not valid YAML at line 1"],
                 id="tags that build Python objects are refused"),
    pytest.param("sync:\n  state_path: caf\u00e9.sqlite\n".encode("latin-1"), ["not UTF-8"], id="not UTF-8"),
])
def test_a_yaml_problem_says_where_and_what(tmp_path, content, expected):
    path = tmp_path / "sync.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        config.load_config(path)
    assert info.value.exit_code == ExitCode.CONFIG
    for text in expected:
        assert text in str(info.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load_config(tmp_path / "nope.yaml")
    assert "sync.yaml.example" in str(info.value)


def test_record_types_must_be_record_type_ids():
    with pytest.raises(ConfigError) as info:
        config.parse_settings({"salesforce": {"record_types": {"New Business": "001Hs00000CmAbcIAE"}}})
    assert "New Business" in str(info.value)


def test_record_type_choice():
    s = config.parse_settings({"salesforce": {"record_types": {"Renewal": GOOD_RT, "New Business": GOOD_RT}}})
    assert s.record_type_id() == GOOD_RT
    s = config.parse_settings({"salesforce": {"record_types": {"Renewal": GOOD_RT}}})
    assert s.record_type_id() is None  # org default
    with pytest.raises(ConfigError):
        config.parse_settings({"salesforce": {"opportunity_record_type": "Upsell", "record_types": {}}})


def test_the_new_business_rule_takes_the_first_match():
    assert config.new_business_record_type(["Renewal", "new_business", "New Business"]) == "new_business"
    assert config.new_business_record_type(["Renewal", "New Business Plus"]) is None
    first, second = salesforce_ids.to_18("0125g000000AbCe"), salesforce_ids.to_18("0125g000000AbCf")
    s = config.parse_settings({"salesforce": {"record_types": {"Renewal": GOOD_RT, "New_Business": first,
                                                               "New Business": second}}})
    assert s.record_type_id() == first and s.record_type_name() == "New_Business"
    s = config.parse_settings({"salesforce": {"record_types": {"Renewal": GOOD_RT, "New_Business": first},
                                              "opportunity_record_type": "Renewal"}})
    assert s.record_type_id() == GOOD_RT  # a configured one wins over the rule


def test_stripe_secret_from_environment_only():
    assert config.stripe_secrets({"STRIPE_API_KEY": "sk_test_abc123"}).api_key == "sk_test_abc123"
    with pytest.raises(ConfigError) as info:
        config.stripe_secrets({})
    assert "STRIPE_API_KEY" in str(info.value)
    with pytest.raises(ConfigError):
        config.stripe_secrets({"STRIPE_API_KEY": "pk_test_publishable"})
    assert "sk_test_abc123" not in repr(config.stripe_secrets({"STRIPE_API_KEY": "sk_test_abc123"}))


@pytest.mark.parametrize(("env", "mode"), [
    ({"SF_INSTANCE_URL": "https://x.my.salesforce.com", "SF_ACCESS_TOKEN": "00Dtoken"}, "token"),
    ({"SF_CONSUMER_KEY": "k", "SF_CONSUMER_SECRET": "s", "SF_DOMAIN": "acme.my"}, "client_credentials"),
    ({"SF_USERNAME": "u", "SF_PASSWORD": "p", "SF_SECURITY_TOKEN": "t"}, "password"),
])
def test_salesforce_modes(env, mode):
    assert config.salesforce_secrets(env).mode == mode


def test_salesforce_jwt_mode_needs_a_key_file(tmp_path):
    key = tmp_path / "server.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    env = {"SF_USERNAME": "u", "SF_CONSUMER_KEY": "k", "SF_PRIVATE_KEY_FILE": str(key), "SF_DOMAIN": "test"}
    s = config.salesforce_secrets(env)
    assert s.mode == "jwt" and s.domain == "test"
    with pytest.raises(ConfigError):
        config.salesforce_secrets({**env, "SF_PRIVATE_KEY_FILE": str(tmp_path / "missing.key")})


def test_partial_salesforce_credentials_name_what_is_missing():
    with pytest.raises(ConfigError) as info:
        config.salesforce_secrets({"SF_CONSUMER_KEY": "k", "SF_CONSUMER_SECRET": "s"})
    assert "SF_DOMAIN" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config.salesforce_secrets({"SF_INSTANCE_URL": "http://insecure", "SF_ACCESS_TOKEN": "t"})
    assert "https://" in str(info.value)


def test_field_names_derive_from_the_one_table_of_fields():
    from stripe_sf_sync.fields import FIELDS, FieldNames

    keys = list(dict.fromkeys(spec.key for spec in FIELDS))
    assert sorted(FieldNames.model_fields) == sorted(keys)
    for spec in FIELDS:
        assert FieldNames.model_fields[spec.key].default == spec.default, spec.key
    assert config.FieldNames is FieldNames  # config's name for it, where other modules import it


def test_the_packaged_example_documents_every_field():
    from stripe_sf_sync.fields import FIELDS

    fields = config.example_config().split("\n  fields:\n", 1)[1].split("\n\n", 1)[0]
    for spec in FIELDS:
        assert f"\n    {spec.key}: {spec.default or 'null'}\n" in f"\n{fields}\n", spec.key
