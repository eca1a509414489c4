"""The console: web pages where admins and operators review, correct and teach the bot (docs/console.md).

    python -m bot console            # serves create_app(settings) on CONSOLE_LISTEN

Modules: app (routes, guard, headers), auth (links, Mini App initData, sessions, CSRF, rate limit), people (roles),
audit (who changed what), review (the inbox over the training log), and one module of views per page group.
"""
