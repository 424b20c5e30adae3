"""One module per scenario, each holding its Scenario class (`base.Scenario`); the registry is `fmhub.registry`."""
