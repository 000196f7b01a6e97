output "url" {
  description = "The gateway, through the load balancer (point your DNS name at it)."
  value       = "https://${aws_lb.main.dns_name}"
}

output "models_bucket" {
  description = "Triton's model repository: publish versions under s3://BUCKET/PREFIX."
  value       = "s3://${module.models_bucket.bucket}/${var.model_repository_prefix}"
}

output "captures_bucket" {
  description = "Captured frames: s3://BUCKET/PREFIX/YYYY/MM/DD/<stream>/."
  value       = "s3://${module.captures_bucket.bucket}/${var.capture_prefix}"
}

output "streams_secret_arn" {
  description = "The cameras (APP_STREAMS, JSON): put its value with aws secretsmanager put-secret-value."
  value       = aws_secretsmanager_secret.streams.arn
}

output "triton_admin_key_secret_arn" {
  description = "Triton's model-repository API key (header triton-admin-key)."
  value       = aws_secretsmanager_secret.triton_admin_key.arn
}

output "gateway_api_keys_secret_arn" {
  description = "The gateway's API keys (JSON list): clients send one as Authorization: Bearer or X-API-Key."
  value       = aws_secretsmanager_secret.gateway_api_keys.arn
}

output "cluster" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.main.name
}

output "triton_address" {
  description = "Where the gateway reaches Triton (gRPC), inside the VPC."
  value       = "${local.triton_dns}:8001"
}

output "log_groups" {
  description = "CloudWatch log groups (the gateway's carries the EMF lines)."
  value       = { for k, g in aws_cloudwatch_log_group.main : k => g.name }
}
