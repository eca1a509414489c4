"""The loop, proven: conversations → operators' answers → /retrain → promotion → better answers."""
import shutil

import pytest

from llmcore.registry import Registry

from .botkit import settings_for
from .conftest import TINY_MODEL, serve_models
from .loopflow import ADMIN, OPERATORS, run_loop

TOKEN = "loop-admin-token"


@pytest.fixture
async def llmcore_for_loop(tiny_models, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    runner, url = await serve_models(root, TOKEN, max_batch=8)
    yield url, Registry(root)
    await runner.cleanup()


async def test_operators_answers_come_back_from_the_retrained_model(telegram, redis_url, llmcore_for_loop, prefix, seeded):
    url, registry = llmcore_for_loop
    shape = {k: v for k, v in TINY_MODEL.items() if k != "dropout"}
    settings = settings_for(telegram, redis_url, url, prefix, "polling", admin_ids=str(ADMIN), operator_chat_id=OPERATORS,
                            llmcore_admin_token=TOKEN, retrain_shape=shape, min_confidence=-2.0, min_training_conversations=5)
    result = await run_loop(telegram, settings, minutes=0.75)  # 0.5 left the gate refusing every answer on a busy machine
    assert result["version"] == "v0002" and registry.current() == "v0002"
    assert result["before_char_f1"] < 0.5, result["before"]
    assert result["after_char_f1"] >= 0.8, result["after"]
