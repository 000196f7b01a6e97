# Logs, and alarms on the metrics CloudWatch extracts from the gateway's EMF lines.  The lines
# carry a [service] dimension set besides [service, stream, model]: one alarm watches every stream.

resource "aws_cloudwatch_log_group" "main" {
  for_each          = toset(["gateway", "triton"])
  name              = "/ecs/${var.name}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_cloudwatch_metric_alarm" "frame_age" {
  alarm_name          = "${var.name}-frame-age-p95"
  alarm_description   = "Frames reach subscribers late: p95 capture-to-event age above ${var.alarm_frame_age_p95_ms} ms (all streams)."
  namespace           = "stream-ml"
  metric_name         = "FrameAge"
  dimensions          = { service = var.name }
  extended_statistic  = "p95"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 4
  threshold           = var.alarm_frame_age_p95_ms
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "error_rate" {
  alarm_name          = "${var.name}-inference-error-rate"
  alarm_description   = "Stream inferences fail: errors above ${var.alarm_error_rate * 100}% of predictions (all streams)."
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  threshold           = var.alarm_error_rate
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions

  metric_query {
    id          = "rate"
    expression  = "errors / MAX([predictions + errors, 1])"
    label       = "failed / attempted"
    return_data = true
  }

  metric_query {
    id = "errors"
    metric {
      namespace   = "stream-ml"
      metric_name = "Errors"
      dimensions  = { service = var.name }
      period      = 60
      stat        = "Sum"
    }
  }

  metric_query {
    id = "predictions"
    metric {
      namespace   = "stream-ml"
      metric_name = "Predictions"
      dimensions  = { service = var.name }
      period      = 60
      stat        = "Sum"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "gateway_5xx" {
  alarm_name          = "${var.name}-gateway-5xx"
  alarm_description   = "The gateway answers 5xx: a dependency (Triton) is down or failing."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HTTPCode_Target_5XX_Count"
  dimensions          = { LoadBalancer = aws_lb.main.arn_suffix, TargetGroup = aws_lb_target_group.gateway.arn_suffix }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 10
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}
