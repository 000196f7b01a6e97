# Least privilege: the gateway may put objects under the capture prefix; Triton may read the model
# prefix; the task execution role may read the secrets it injects.  Nothing else.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:ecs:${var.region}:${data.aws_caller_identity.current.account_id}:*"]
    }
  }
}

# --- task execution: pull images, write logs, read the secrets it injects ------------------------

resource "aws_iam_role" "execution" {
  name               = "${var.name}-task-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution_secrets" {
  statement {
    sid     = "ReadTheInjectedSecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_secretsmanager_secret.streams.arn,
      aws_secretsmanager_secret.triton_admin_key.arn,
      aws_secretsmanager_secret.gateway_api_keys.arn,
    ]
  }
  statement {
    sid       = "DecryptThem"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "execution_secrets" {
  name   = "secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution_secrets.json
}

# --- the gateway: put captured frames under the capture prefix ----------------------------------

resource "aws_iam_role" "gateway" {
  name               = "${var.name}-gateway"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "gateway" {
  statement {
    sid       = "PutCaptures"
    actions   = ["s3:PutObject"]
    resources = ["${module.captures_bucket.arn}/${var.capture_prefix}*"]
  }
  statement {
    sid       = "EncryptCaptures"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "gateway" {
  name   = "captures"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.gateway.json
}

# --- Triton: read the model repository ------------------------------------------------------------

resource "aws_iam_role" "triton" {
  name               = "${var.name}-triton"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "triton" {
  statement {
    sid       = "ListTheRepository"
    actions   = ["s3:ListBucket"]
    resources = [module.models_bucket.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.model_repository_prefix}*"]
    }
  }
  statement {
    sid       = "ReadTheRepository"
    actions   = ["s3:GetObject"]
    resources = ["${module.models_bucket.arn}/${var.model_repository_prefix}*"]
  }
  statement {
    sid       = "DecryptTheRepository"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "triton" {
  name   = "model-repository"
  role   = aws_iam_role.triton.id
  policy = data.aws_iam_policy_document.triton.json
}

# --- the GPU instances: the ECS agent ------------------------------------------------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gpu_hosts" {
  name               = "${var.name}-gpu-hosts"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy_attachment" "gpu_hosts" {
  for_each = toset([
    "service-role/AmazonEC2ContainerServiceforEC2Role",
    "AmazonSSMManagedInstanceCore",
  ])
  role       = aws_iam_role.gpu_hosts.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.value}"
}

resource "aws_iam_instance_profile" "gpu_hosts" {
  name = "${var.name}-gpu-hosts"
  role = aws_iam_role.gpu_hosts.name
}
