"""Sandbox backends behind one small interface (base.Backend); registry.build_backend chooses one."""
