# Two private, encrypted buckets (modules/private_bucket): Triton's model repository (read by
# Triton, written by whoever publishes a model version) and the gateway's captured frames
# (written by the gateway, expired after capture_retention_days).

module "models_bucket" {
  source      = "./modules/private_bucket"
  name        = "${var.name}-models-${data.aws_caller_identity.current.account_id}"
  kms_key_arn = aws_kms_key.main.arn
}

module "captures_bucket" {
  source          = "./modules/private_bucket"
  name            = "${var.name}-captures-${data.aws_caller_identity.current.account_id}"
  kms_key_arn     = aws_kms_key.main.arn
  expire_prefix   = var.capture_prefix
  expire_days     = var.capture_retention_days
  noncurrent_days = 7
}
