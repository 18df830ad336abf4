"""The proof: leak checker, pytest plugin, notebook check, child subreaper, fault-injecting workers.

Library code never imports this package; the public face re-exports `leakcheck` for users.
"""
