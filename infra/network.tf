# Security groups: the internet (alb_ingress_cidrs) reaches only the load balancer; only the load
# balancer reaches the gateway; only the gateway reaches Triton.  tests/unit/test_deploy_infra.py
# asserts it.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "HTTPS from the allowed clients to the load balancer"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "gateway" {
  name        = "${var.name}-gateway"
  description = "The gateway tasks: from the load balancer only"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "triton" {
  name        = "${var.name}-triton"
  description = "The Triton tasks: gRPC from the gateway only"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "gpu_hosts" {
  name        = "${var.name}-gpu-hosts"
  description = "The GPU instances themselves: no ingress (tasks have their own ENIs, awsvpc)"
  vpc_id      = var.vpc_id
}

# --- load balancer -------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from an allowed client network"
  cidr_ipv4         = each.value
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from an allowed client network, redirected to HTTPS"
  cidr_ipv4         = each.value
  from_port         = 80
  to_port           = 80
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "alb_to_gateway" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the gateway tasks"
  referenced_security_group_id = aws_security_group.gateway.id
  from_port                    = 8000
  to_port                      = 8000
  ip_protocol                  = "tcp"
}

# --- gateway -------------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "gateway_from_alb" {
  security_group_id            = aws_security_group.gateway.id
  description                  = "HTTP from the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  from_port                    = 8000
  to_port                      = 8000
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "gateway_to_triton" {
  security_group_id            = aws_security_group.gateway.id
  description                  = "gRPC to Triton"
  referenced_security_group_id = aws_security_group.triton.id
  from_port                    = 8001
  to_port                      = 8001
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "gateway_https" {
  security_group_id = aws_security_group.gateway.id
  description       = "HTTPS to AWS APIs: S3 captures, Secrets Manager, ECR, CloudWatch Logs"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "gateway_rtsp" {
  for_each          = { for pair in setproduct(var.camera_cidrs, [554, 8554]) : "${pair[0]}:${pair[1]}" => pair }
  security_group_id = aws_security_group.gateway.id
  description       = "RTSP to the cameras"
  cidr_ipv4         = each.value[0]
  from_port         = each.value[1]
  to_port           = each.value[1]
  ip_protocol       = "tcp"
}

# --- Triton --------------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "triton_from_gateway" {
  security_group_id            = aws_security_group.triton.id
  description                  = "gRPC from the gateway"
  referenced_security_group_id = aws_security_group.gateway.id
  from_port                    = 8001
  to_port                      = 8001
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "triton_https" {
  security_group_id = aws_security_group.triton.id
  description       = "HTTPS to S3 (the model repository) and ECR"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "gpu_hosts_https" {
  security_group_id = aws_security_group.gpu_hosts.id
  description       = "HTTPS to the ECS, ECR and SSM endpoints (the ECS agent)"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}
