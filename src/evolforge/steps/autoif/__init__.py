"""AutoIF, the SLM paper's third scenario: constraints (``constraints.run``), their verification functions checked in
the sandbox (``verify.run``) and the verified answers (``respond.run``)."""
