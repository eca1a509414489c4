"""History: capped, expiring, one pipeline per exchange; one user's turns can be taken out of a group."""
from bot.history import History


async def test_recent_turns_in_order_capped_and_expiring(redis, prefix):
    history = History(redis, prefix, max_turns=4, ttl_s=100)
    for i in range(3):
        await history.append(7, 70, f"q{i}", f"a{i}")
    assert await history.recent(7, 10) == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                           {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    assert await history.recent(7, 2) == [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    assert await history.recent(7, 0) == []
    assert 0 < await redis.ttl(history.key(7)) <= 100
    assert await history.recent(8, 5) == []  # another chat


async def test_clear_and_forget_one_user_in_a_group(redis, prefix):
    history = History(redis, prefix, max_turns=20, ttl_s=100)
    await history.append(-100, 1, "alice asks", "to alice")
    await history.append(-100, 2, "bob asks", "to bob")
    await history.append(1, 1, "alice in private", "private answer")
    await history.forget_user(1)
    assert await history.recent(-100, 10) == [{"role": "user", "content": "bob asks"}, {"role": "assistant", "content": "to bob"}]
    assert await history.recent(1, 10) == []
    await history.clear(-100)
    assert await history.recent(-100, 10) == []


async def test_in_a_group_the_model_is_shown_the_askers_own_turns(redis, prefix):
    """A group's history is one list: another member's turns (with whatever personal data they wrote) were the model's
    context for the next question. With the asker's id, their own exchanges in that chat only."""
    history = History(redis, prefix, max_turns=20, ttl_s=100)
    await history.append(-100, 1, "alice: 我的手机号是多少来着", "to alice")
    await history.append(-100, 2, "bob: 运费多少？", "满69元包邮。")
    await history.append(-100, 1, "alice: 那偏远地区呢", "另收10元。")
    bobs = [{"role": "user", "content": "bob: 运费多少？"}, {"role": "assistant", "content": "满69元包邮。"}]
    assert await history.recent(-100, 4, 2) == bobs
    assert [t["content"] for t in await history.recent(-100, 2, 1)] == ["alice: 那偏远地区呢", "另收10元。"]
    assert len(await history.recent(-100, 10)) == 6  # the chat's whole history, as operators read it
