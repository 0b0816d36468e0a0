FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg setup.py README.md ./
COPY notification_socketio ./notification_socketio
RUN pip install --no-cache-dir .
COPY wsgi.py gunicorn.conf.py ./
ENV PORT=3000
EXPOSE 3000
USER nobody
# gunicorn.conf.py in /app holds the worker class, one worker and the other settings.
CMD ["gunicorn", "wsgi:app"]
