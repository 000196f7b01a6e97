# A private bucket: owner-enforced, every public access blocked, SSE-KMS with a bucket key,
# versioned, TLS only, incomplete uploads aborted, and (optionally) objects under a prefix expired.

terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
  }
}

variable "name" {
  description = "Bucket name."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the default encryption."
  type        = string
}

variable "expire_prefix" {
  description = "Objects under this prefix expire after expire_days (null: nothing expires)."
  type        = string
  default     = null
}

variable "expire_days" {
  description = "Days before objects under expire_prefix expire."
  type        = number
  default     = 90
}

variable "noncurrent_days" {
  description = "Days before an overwritten or deleted object version is removed."
  type        = number
  default     = 90
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logging would need another bucket per bucket; object-level events go to CloudTrail data events where the account enables them
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice with its own cost; captures and model files can be re-created
  #checkov:skip=CKV2_AWS_62:No consumer of bucket event notifications in this stack
  bucket = var.name
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "housekeeping"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  dynamic "rule" {
    for_each = var.expire_prefix == null ? [] : [var.expire_prefix]
    content {
      id     = "expire"
      status = "Enabled"
      filter {
        prefix = rule.value
      }
      expiration {
        days = var.expire_days
      }
      abort_incomplete_multipart_upload {
        days_after_initiation = 7
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket     = aws_s3_bucket.this.id
  policy     = data.aws_iam_policy_document.tls_only.json
  depends_on = [aws_s3_bucket_public_access_block.this]
}

output "arn" {
  description = "Bucket ARN."
  value       = aws_s3_bucket.this.arn
}

output "bucket" {
  description = "Bucket name."
  value       = aws_s3_bucket.this.bucket
}
