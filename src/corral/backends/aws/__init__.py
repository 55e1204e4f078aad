"""What the AWS backends (AWS Batch, SageMaker) share: a boto3 client with corral's errors
(:mod:`.session`), requests checked against botocore's service model before they are sent
(:mod:`.validate`), and CloudWatch Logs read page by page or followed (:mod:`.cloudwatch`)."""
