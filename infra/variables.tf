variable "name" {
  description = "Name of the deployment: prefixes every resource, and the EMF `service` dimension."
  type        = string
  default     = "stream-ml"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "2-31 characters: lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region (one with the GPU instance type, e.g. us-east-1, eu-west-1)."
  type        = string
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# --- network (an existing VPC) ------------------------------------------------------------------

variable "vpc_id" {
  description = "The VPC to deploy into."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer (at least two AZs)."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets of the tasks and GPU instances (a NAT gateway or VPC endpoints for S3, ECR, Logs, Secrets Manager)."
  type        = list(string)
}

variable "alb_ingress_cidrs" {
  description = "Who may reach the gateway through the load balancer (HTTPS). No default on purpose: name your clients."
  type        = list(string)
}

variable "camera_cidrs" {
  description = "Where the cameras are: the gateway may open RTSP (554, 8554) to these networks only."
  type        = list(string)
  default     = []
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener."
  type        = string
}

# --- images and sizes ---------------------------------------------------------------------------

variable "gateway_image" {
  description = "The gateway image (deploy/gateway/Dockerfile), pushed to a registry the tasks can pull from."
  type        = string
}

variable "triton_image" {
  description = "Triton's image: the NGC release whose LibTorch the exporter targets (24.10: LibTorch 2.5)."
  type        = string
  default     = "nvcr.io/nvidia/tritonserver:24.10-py3"
}

variable "gpu_instance_type" {
  description = "GPU instance type of Triton's capacity (g5: NVIDIA A10G, 24 GB; g6: L4)."
  type        = string
  default     = "g5.xlarge"
}

variable "gpu_instances_max" {
  description = "Most GPU instances the capacity provider may run (one Triton task each)."
  type        = number
  default     = 2
}

variable "triton_tasks" {
  description = "Triton tasks (one GPU each); the gateway balances over them through DNS."
  type        = number
  default     = 1
}

variable "triton_cpu" {
  description = "CPU units of a Triton task (1024 = one vCPU)."
  type        = number
  default     = 3072
}

variable "triton_memory" {
  description = "Memory of a Triton task, MiB (g5.xlarge has 16 GiB)."
  type        = number
  default     = 12288
}

variable "gateway_cpu" {
  description = "CPU units of a gateway task (Fargate); about 40 sampled 360p cameras per vCPU."
  type        = number
  default     = 2048
}

variable "gateway_memory" {
  description = "Memory of a gateway task, MiB (Fargate)."
  type        = number
  default     = 4096
}

variable "gateway_tasks_min" {
  description = "Fewest gateway tasks."
  type        = number
  default     = 2
}

variable "gateway_tasks_max" {
  description = "Most gateway tasks autoscaling may run."
  type        = number
  default     = 6
}

variable "gateway_cpu_target" {
  description = "Autoscaling keeps the gateway service's average CPU near this percentage."
  type        = number
  default     = 60
}

variable "alb_idle_timeout_s" {
  description = "Load balancer idle timeout: longer than the SSE keep-alive interval (15 s), so idle event streams stay open."
  type        = number
  default     = 300

  validation {
    condition     = var.alb_idle_timeout_s >= 120 && var.alb_idle_timeout_s <= 4000
    error_message = "At least 120 s (SSE), at most 4000 s."
  }
}

# --- data ----------------------------------------------------------------------------------------

variable "model_repository_prefix" {
  description = "Where Triton's model repository lives in the models bucket (s3://BUCKET/PREFIX)."
  type        = string
  default     = "models/"
}

variable "capture_prefix" {
  description = "Where the gateway stores captured frames in the capture bucket."
  type        = string
  default     = "captures/"
}

variable "capture_retention_days" {
  description = "Captured frames expire after this many days."
  type        = number
  default     = 90
}

variable "log_retention_days" {
  description = "CloudWatch log retention, days (EMF metrics are extracted on arrival and outlive it)."
  type        = number
  default     = 365
}

# --- alarms --------------------------------------------------------------------------------------

variable "alarm_frame_age_p95_ms" {
  description = "Alarm when the p95 frame age (capture to event, every stream) stays above this, ms."
  type        = number
  default     = 1000
}

variable "alarm_error_rate" {
  description = "Alarm when failed stream inferences exceed this fraction of predictions."
  type        = number
  default     = 0.01
}

variable "alarm_actions" {
  description = "SNS topic ARNs notified by the alarms."
  type        = list(string)
  default     = []
}
