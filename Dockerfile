FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg setup.py README.md constraints.txt ./
COPY notification_socketio ./notification_socketio
# The tested set of versions, exactly: what CI ran is what ships.
RUN pip install --no-cache-dir -c constraints.txt .
COPY wsgi.py gunicorn.conf.py ./
ENV PORT=3000
EXPOSE 3000
USER nobody
# gunicorn.conf.py in /app holds the worker class, one worker and the other settings.
CMD ["gunicorn", "wsgi:app"]
