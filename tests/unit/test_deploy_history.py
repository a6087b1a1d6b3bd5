from serve_app import deploy_history
from serve_app.config import load_config


def _configs():
    base = load_config(environ={})
    changed = base.model_copy(update={"app_name": "changed"})
    return base, changed


def test_record_then_roll_back(tmp_path):
    base, changed = _configs()
    assert deploy_history.previous(tmp_path) is None
    deploy_history.record(base, tmp_path)
    deploy_history.record(changed, tmp_path)
    assert deploy_history.current(tmp_path).app_name == "changed"
    assert deploy_history.previous(tmp_path) == base
    deploy_history.drop_newest(tmp_path)
    assert deploy_history.current(tmp_path) == base
    assert deploy_history.previous(tmp_path) is None


def test_redeploying_the_same_config_adds_no_entry(tmp_path):
    base, _ = _configs()
    first = deploy_history.record(base, tmp_path)
    assert deploy_history.record(base, tmp_path) == first
    assert len(list(deploy_history.history_dir(tmp_path).glob("*.yaml"))) == 1


def test_history_is_pruned(tmp_path):
    base, _ = _configs()
    for n in range(deploy_history.KEEP + 5):
        deploy_history.record(base.model_copy(update={"app_name": f"app{n}"}), tmp_path)
    entries = sorted(deploy_history.history_dir(tmp_path).glob("*.yaml"))
    assert len(entries) == deploy_history.KEEP
    assert deploy_history.current(tmp_path).app_name == f"app{deploy_history.KEEP + 4}"
