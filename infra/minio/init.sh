#!/bin/sh
# MinIO's setup, run by compose's `minio-init` (minio/mc image) before the application starts; safe to run again.
# The bucket, and the application's own user, which may use that bucket only (app-policy.json). MinIO's root user is
# for operators: the application never holds it.
set -eu
mc alias set s3 http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "s3/$BUCKET"
mc admin policy create s3 illustrations-app /init/app-policy.json
mc admin user add s3 "$APP_USER" "$APP_SECRET_KEY"
# `attach` refuses a policy that is already attached: a second run checks it is.
mc admin policy attach s3 illustrations-app --user "$APP_USER" \
  || mc admin user info s3 "$APP_USER" | grep -q illustrations-app
