# Two services on one ECS cluster (infra/README.md explains the choice):
# - triton: one GPU per task, on EC2 GPU capacity (ECS GPU-optimized AMI, managed scaling);
# - gateway: CPU only, on Fargate, behind the load balancer, scaled on its own load.
# The gateway finds the Triton tasks through Cloud Map DNS (triton.<name>.internal:8001).

locals {
  triton_dns     = "triton.${var.name}.internal"
  admin_header   = "triton-admin-key"
  keepalive_s    = 15 # SSE keep-alive comments: well inside alb_idle_timeout_s
  send_timeout_s = 10
  graceful_s     = 15 # uvicorn's graceful shutdown: >= send timeout, < the task's stopTimeout
  stop_timeout_s = 30
}

resource "aws_ecs_cluster" "main" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# --- GPU capacity ----------------------------------------------------------------------------------

data "aws_ssm_parameter" "ecs_gpu_ami" {
  name = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.name}-gpu-"
  image_id               = data.aws_ssm_parameter.ecs_gpu_ami.value
  instance_type          = var.gpu_instance_type
  vpc_security_group_ids = [aws_security_group.gpu_hosts.id]
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.gpu_hosts.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 100 # the NGC Triton image is ~15 GB
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = aws_kms_key.main.arn
      delete_on_termination = true
    }
  }

  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<CONFIG
    ECS_CLUSTER=${aws_ecs_cluster.main.name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_AWSVPC_BLOCK_IMDS=true
    ECS_CONTAINER_STOP_TIMEOUT=${local.stop_timeout_s}s
    CONFIG
  EOT
  )
}

resource "aws_autoscaling_group" "gpu" {
  name_prefix           = "${var.name}-gpu-"
  min_size              = 0
  max_size              = var.gpu_instances_max
  vpc_zone_identifier   = var.private_subnet_ids
  protect_from_scale_in = true # managed termination protection: never drain a GPU under a task

  launch_template {
    id      = aws_launch_template.gpu.id
    version = "$Latest"
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  lifecycle {
    ignore_changes = [desired_capacity] # the capacity provider's managed scaling owns it
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = "${var.name}-gpu"

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu.arn
    managed_termination_protection = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = 1
    }
  }
}

resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = [aws_ecs_capacity_provider.gpu.name, "FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

# --- service discovery -------------------------------------------------------------------------------

resource "aws_service_discovery_private_dns_namespace" "main" {
  name = "${var.name}.internal"
  vpc  = var.vpc_id
}

resource "aws_service_discovery_service" "triton" {
  name = "triton"

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.main.id
    routing_policy = "MULTIVALUE"
    dns_records {
      ttl  = 10
      type = "A"
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }
}

# --- Triton ------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "triton" {
  #checkov:skip=CKV_AWS_336:Triton copies the S3 model repository into a local temporary directory at start
  family                   = "${var.name}-triton"
  requires_compatibilities = ["EC2"]
  network_mode             = "awsvpc"
  cpu                      = var.triton_cpu
  memory                   = var.triton_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.triton.arn

  container_definitions = jsonencode([{
    name      = "triton"
    image     = var.triton_image
    essential = true
    # A shell only to put the secret into the flag; exec so tritonserver gets SIGTERM.
    entryPoint = ["/bin/sh", "-c"]
    command = [join(" ", [
      "exec tritonserver",
      "--model-repository=s3://${module.models_bucket.bucket}/${trimsuffix(var.model_repository_prefix, "/")}",
      "--disable-auto-complete-config",
      "--model-control-mode=explicit",
      "--load-model=*",
      "--http-restricted-api=model-repository:${local.admin_header}=\"$TRITON_ADMIN_KEY\"",
      "--grpc-restricted-protocol=model-repository:${local.admin_header}=\"$TRITON_ADMIN_KEY\"",
      "--exit-timeout-secs=20",
    ])]
    environment          = [{ name = "AWS_REGION", value = var.region }]
    secrets              = [{ name = "TRITON_ADMIN_KEY", valueFrom = aws_secretsmanager_secret.triton_admin_key.arn }]
    resourceRequirements = [{ type = "GPU", value = "1" }]
    portMappings = [
      { containerPort = 8000, protocol = "tcp" },
      { containerPort = 8001, protocol = "tcp" },
      { containerPort = 8002, protocol = "tcp" },
    ]
    linuxParameters = { sharedMemorySize = 1024, initProcessEnabled = true }
    ulimits = [
      { name = "memlock", softLimit = -1, hardLimit = -1 },
      { name = "stack", softLimit = 67108864, hardLimit = 67108864 },
    ]
    healthCheck = {
      command     = ["CMD-SHELL", "curl -fsS http://localhost:8000/v2/health/ready || exit 1"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 300
    }
    stopTimeout = local.stop_timeout_s
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.main["triton"].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "triton"
      }
    }
  }])
}

resource "aws_ecs_service" "triton" {
  name                               = "triton"
  cluster                            = aws_ecs_cluster.main.id
  task_definition                    = aws_ecs_task_definition.triton.arn
  desired_count                      = var.triton_tasks
  deployment_minimum_healthy_percent = 100 # a new version starts on another GPU before the old one stops
  deployment_maximum_percent         = 200
  propagate_tags                     = "SERVICE"

  capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.gpu.name
    weight            = 1
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.triton.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.triton.arn
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  depends_on = [aws_ecs_cluster_capacity_providers.main]
}

# --- the gateway -------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "gateway" {
  family                   = "${var.name}-gateway"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.gateway_cpu
  memory                   = var.gateway_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.gateway.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "captures" # the capture spool: Fargate ephemeral storage (the root filesystem is read-only)
  }

  container_definitions = jsonencode([{
    name                   = "gateway"
    image                  = var.gateway_image
    essential              = true
    readonlyRootFilesystem = true
    user                   = "10001:10001"
    portMappings           = [{ containerPort = 8000, protocol = "tcp" }]
    environment = [
      { name = "APP_TRITON__URL", value = "${local.triton_dns}:8001" },
      { name = "APP_DEVICE", value = "gpu" },
      { name = "APP_SERVER__PORT", value = "8000" },
      { name = "APP_SERVER__GRACEFUL_SHUTDOWN_S", value = tostring(local.graceful_s) },
      { name = "APP_INGEST__KEEPALIVE_S", value = tostring(local.keepalive_s) },
      { name = "APP_INGEST__SEND_TIMEOUT_S", value = tostring(local.send_timeout_s) },
      { name = "APP_STREAM_POLICY__ALLOWED_HOSTS", value = "[]" },
      { name = "APP_METRICS__EMF", value = "true" },
      { name = "APP_METRICS__NAMESPACE", value = "stream-ml" },
      { name = "APP_METRICS__DIMENSIONS", value = jsonencode({ service = var.name }) },
      { name = "APP_CAPTURE__ROOT", value = "/var/lib/stream-ml/captures" },
      { name = "APP_CAPTURE__S3__BUCKET", value = module.captures_bucket.bucket },
      { name = "APP_CAPTURE__S3__PREFIX", value = var.capture_prefix },
      { name = "APP_CAPTURE__S3__REGION", value = var.region },
    ]
    secrets = [
      { name = "APP_STREAMS", valueFrom = aws_secretsmanager_secret.streams.arn },
      { name = "APP_AUTH__API_KEYS", valueFrom = aws_secretsmanager_secret.gateway_api_keys.arn },
    ]
    mountPoints = [{ sourceVolume = "captures", containerPath = "/var/lib/stream-ml/captures", readOnly = false }]
    healthCheck = {
      command     = ["CMD", "python", "-m", "gateway.healthcheck", "/health"]
      interval    = 10
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    stopTimeout = local.stop_timeout_s
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.main["gateway"].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "gateway"
      }
    }
  }])
}

resource "aws_ecs_service" "gateway" {
  name                              = "gateway"
  cluster                           = aws_ecs_cluster.main.id
  task_definition                   = aws_ecs_task_definition.gateway.arn
  desired_count                     = var.gateway_tasks_min
  health_check_grace_period_seconds = 60
  propagate_tags                    = "SERVICE"

  capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.gateway.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.gateway.arn
    container_name   = "gateway"
    container_port   = 8000
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  lifecycle {
    ignore_changes = [desired_count] # autoscaling owns it
  }

  depends_on = [aws_lb_listener.https, aws_ecs_cluster_capacity_providers.main]
}

# --- autoscaling on the gateway's load ------------------------------------------------------------------

resource "aws_appautoscaling_target" "gateway" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.gateway.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.gateway_tasks_min
  max_capacity       = var.gateway_tasks_max
}

resource "aws_appautoscaling_policy" "gateway_cpu" {
  name               = "${var.name}-gateway-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.gateway.service_namespace
  resource_id        = aws_appautoscaling_target.gateway.resource_id
  scalable_dimension = aws_appautoscaling_target.gateway.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.gateway_cpu_target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "gateway_requests" {
  name               = "${var.name}-gateway-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.gateway.service_namespace
  resource_id        = aws_appautoscaling_target.gateway.resource_id
  scalable_dimension = aws_appautoscaling_target.gateway.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = 3000 # requests per task per minute (~50/s of POST /predict)
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.main.arn_suffix}/${aws_lb_target_group.gateway.arn_suffix}"
    }
  }
}
