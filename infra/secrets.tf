# Secrets injected into the tasks, never in plain task definitions or logs.

# The cameras, passwords included: the JSON list the gateway reads as APP_STREAMS.  Terraform
# creates it empty; set its value out of band (docs/deploy.md), so no password lives in state.
resource "aws_secretsmanager_secret" "streams" {
  #checkov:skip=CKV2_AWS_57:Camera credentials are rotated on the cameras; no Lambda can rotate them
  name                    = "${var.name}/streams"
  description             = "The gateway's cameras (APP_STREAMS): a JSON list of {id, url, ...}"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "streams" {
  secret_id     = aws_secretsmanager_secret.streams.id
  secret_string = "[]"

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# The key Triton's model-repository API demands (the triton-admin-key header).
resource "random_password" "triton_admin_key" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "triton_admin_key" {
  #checkov:skip=CKV2_AWS_57:Rotating it means restarting Triton; replace it with terraform apply -replace=random_password.triton_admin_key
  name                    = "${var.name}/triton-admin-key"
  description             = "Triton's model-repository API key (header triton-admin-key)"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "triton_admin_key" {
  secret_id     = aws_secretsmanager_secret.triton_admin_key.id
  secret_string = random_password.triton_admin_key.result
}

# The gateway's API keys (APP_AUTH__API_KEYS, a JSON list): authentication is on.  One key,
# generated; clients get it from this secret (infra/README.md).
resource "random_password" "gateway_api_key" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "gateway_api_keys" {
  #checkov:skip=CKV2_AWS_57:A new key must reach the clients first; replace it with terraform apply -replace=random_password.gateway_api_key
  name                    = "${var.name}/gateway-api-keys"
  description             = "The gateway's API keys (APP_AUTH__API_KEYS): a JSON list"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "gateway_api_keys" {
  secret_id     = aws_secretsmanager_secret.gateway_api_keys.id
  secret_string = jsonencode([random_password.gateway_api_key.result])
}
