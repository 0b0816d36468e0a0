# The socket.io client that the server serves at /socket.io/socket.io.js, taken from npm
# when the image is built: nothing is fetched at run time, nothing third-party is in the
# repository.
FROM node:20-slim AS client
RUN npm install --prefix /client --no-audit --no-fund socket.io-client@4.8.1

FROM python:3.11-slim
WORKDIR /app
COPY --from=client /client/node_modules/socket.io-client/dist /app/socket.io-client
ENV SOCKETIO_CLIENT_DIR=/app/socket.io-client
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
